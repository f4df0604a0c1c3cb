// The bench's groups of figures, in the order they run: (name for
// `--only`, what the progress line says). `cargo xtask bench` includes
// this file (it checks `--only` before the release build) and must not
// depend on the bench crate, so this file holds nothing else.

/// (group, description), in running order.
pub(crate) const GROUPS: &[(&str, &str)] = &[
    ("calls", "actor calls through the host"),
    ("http", "HTTP through the httpserver provider"),
    ("hop", "actor to provider"),
    ("start", "start times"),
    ("registry", "actor start from an OCI registry"),
    ("recovery", "recovery"),
    ("footprint", "footprint"),
];

/// The group names, comma-separated, for usage texts.
pub(crate) fn group_names() -> String {
    GROUPS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}
