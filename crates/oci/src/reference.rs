//! OCI references (`registry/repository:tag`, `...@sha256:...`) and the rule
//! that tells one from a file path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::OciError;

/// The prefix that marks a string as an OCI reference whatever else it looks like.
pub const OCI_SCHEME: &str = "oci://";
/// The prefix that marks a string as a file path whatever else it looks like.
pub const FILE_SCHEME: &str = "file://";

/// The longest repository name (registry included) the distribution spec allows.
const MAX_NAME_LEN: usize = 255;
/// The longest tag the distribution spec allows.
const MAX_TAG_LEN: usize = 128;

/// A parsed OCI reference: an explicit registry, a repository, and a tag, a
/// digest or both (the digest wins when both are given).
///
/// Parsing lowercases the whole reference, as wasmCloud does (OCI repository
/// names are lowercase; wasmCloud lowercases tags too, so `wash push` stores
/// them that way). [`Reference`]'s `Display` is its canonical form,
/// `registry/repository[:tag][@sha256:hex]`, which is also the key of the
/// tag cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// The registry host, with its port if one was given (`127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository inside the registry (`wasmcloud/echo`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if one was given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The manifest digest (`sha256:...`), if one was given.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_ref().map(Digest::as_str)
    }

    pub(crate) fn manifest_digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// Whether this reference means the tag `latest`: explicitly, or by
    /// having neither a tag nor a digest. A digest pins the content, so a
    /// reference with one is never "latest", whatever its tag says.
    pub fn is_latest(&self) -> bool {
        self.digest.is_none() && self.tag.as_deref().is_none_or(|tag| tag == "latest")
    }

    /// The reference as `oci-client` takes it.
    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        let registry = self.registry.clone();
        let repository = self.repository.clone();
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                tag.clone(),
                digest.to_string(),
            ),
            (None, Some(digest)) => {
                oci_client::Reference::with_digest(registry, repository, digest.to_string())
            }
            (tag, None) => oci_client::Reference::with_tag(
                registry,
                repository,
                tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parses an OCI reference: `[oci://]registry[:port]/repository[:tag][@sha256:hex]`.
///
/// The registry must be explicit (its name contains a `.` or a `:`, or is
/// `localhost`): a host has no default registry, so `echo:1.0` is refused
/// rather than sent to Docker Hub. Only `sha256` digests are accepted.
pub fn parse(input: &str) -> Result<Reference, OciError> {
    let bad = |reason: &str| OciError::BadReference {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let lowered = input.to_lowercase();
    let text = lowered.strip_prefix(OCI_SCHEME).unwrap_or(&lowered);
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(bad("it contains white space"));
    }

    let (name_and_tag, digest) = match text.split_once('@') {
        Some((rest, digest)) => {
            let parsed = Digest::parse(digest)
                .ok_or_else(|| bad("a digest must be sha256: followed by 64 hexadecimal digits"))?;
            (rest, Some(parsed))
        }
        None => (text, None),
    };

    let (registry, path) = name_and_tag
        .split_once('/')
        .ok_or_else(|| bad("it has no registry: write registry/repository:tag"))?;
    if !names_a_registry(registry) {
        return Err(bad(
            "it names no registry (the part before the first `/` needs a `.` or a `:`, or must be `localhost`)",
        ));
    }
    check_registry(registry).map_err(bad)?;

    // A `:` after the last `/` starts the tag; one before it is the registry's port.
    let (repository, tag) = match path.rsplit_once(':') {
        Some((repository, tag)) => (repository, Some(tag)),
        None => (path, None),
    };
    check_repository(repository).map_err(bad)?;
    if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
        return Err(bad(
            "the registry and repository are longer than 255 characters",
        ));
    }
    if let Some(tag) = tag {
        check_tag(tag).map_err(bad)?;
    }
    Ok(Reference {
        registry: registry.to_string(),
        repository: repository.to_string(),
        tag: tag.map(str::to_string),
        digest,
    })
}

/// Where an artifact comes from, as a caller that takes "a file or an OCI
/// reference" should read its argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A local file (`file://` stripped).
    File(PathBuf),
    /// An OCI reference.
    Oci(Reference),
}

/// Tells a file path from an OCI reference with [`looks_like_reference`],
/// and parses the reference.
pub fn classify(input: &str) -> Result<Source, OciError> {
    if looks_like_reference(input) {
        parse(input).map(Source::Oci)
    } else {
        let path = input.strip_prefix(FILE_SCHEME).unwrap_or(input);
        Ok(Source::File(PathBuf::from(path)))
    }
}

/// Whether `input` should be read as an OCI reference rather than a file path.
///
/// The rule, first match wins:
/// 1. it starts with `oci://`: a reference;
/// 2. it starts with `file://`, `/`, `./`, `../` or `~`, or is `.` or `..`: a file;
/// 3. a file or directory of that name exists: a file;
/// 4. it has a `/` with something after it, and the part before the first
///    `/` contains a `.` or a `:` or is `localhost` (a registry host such
///    as `ghcr.io`, `127.0.0.1:5000`, `localhost`): a reference;
/// 5. anything else (`actor.wasm`, `build/actor.wasm`): a file.
///
/// So a relative path whose first directory has a dot in its name and that
/// does not exist yet reads as a reference; write it as `./dir.d/x.wasm`.
/// The answer says nothing about validity: [`parse`] checks that.
pub fn looks_like_reference(input: &str) -> bool {
    reads_as_reference(input, |path| path.exists())
}

/// [`looks_like_reference`] with the file system check passed in.
fn reads_as_reference(input: &str, exists: impl Fn(&Path) -> bool) -> bool {
    if input.starts_with(OCI_SCHEME) {
        return true;
    }
    let file_prefixes = [FILE_SCHEME, "/", "./", "../", "~"];
    if file_prefixes.iter().any(|p| input.starts_with(p)) || input == "." || input == ".." {
        return false;
    }
    if exists(Path::new(input)) {
        return false;
    }
    match input.split_once('/') {
        Some((first, rest)) => !rest.is_empty() && names_a_registry(first),
        None => false,
    }
}

/// Whether the first path component is a registry host rather than a directory.
fn names_a_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first.eq_ignore_ascii_case("localhost")
}

/// `host[:port]`, the host a DNS name, an IPv4 address or a bracketed IPv6 address.
fn check_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("the registry's IPv6 address has no closing `]`")?;
        if inside.is_empty() || !inside.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err("the registry's IPv6 address is not valid");
        }
        match after {
            "" => (inside, None),
            _ => (
                inside,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("the registry has junk after its `]`")?,
                ),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if !registry.starts_with('[') {
        let label_ok = |label: &str| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if !host.split('.').all(label_ok) {
            return Err("the registry host is not a valid host name or address");
        }
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.chars().all(|c| c.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !valid {
            return Err("the registry port must be a number from 1 to 65535");
        }
    }
    Ok(())
}

/// `component(/component)*`, each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_repository(repository: &str) -> Result<(), &'static str> {
    if repository.is_empty() {
        return Err("the repository is empty");
    }
    for component in repository.split('/') {
        if !repository_component_ok(component) {
            return Err("the repository must be lowercase letters and digits, separated by `/`, `.`, `_`, `__` or dashes");
        }
    }
    Ok(())
}

fn repository_component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.first().is_none_or(|&b| !alnum(b)) || bytes.last().is_none_or(|&b| !alnum(b)) {
        return false;
    }
    // Between alphanumeric runs: one `.`, one or two `_`, or any number of `-`.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.chars().all(|c| c == '-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), &'static str> {
    let first_ok = tag
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || tag.len() > MAX_TAG_LEN {
        return Err("the tag must be up to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// (input, registry, repository, tag, digest?) for references that parse.
    #[test]
    fn parses_valid_references() {
        let digest = format!("sha256:{HEX}");
        type Case<'a> = (String, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "ghcr.io/wasmcloud/echo:0.3.4".into(),
                "ghcr.io",
                "wasmcloud/echo",
                Some("0.3.4"),
                None,
            ),
            (
                "oci://ghcr.io/wasmcloud/echo:0.3.4".into(),
                "ghcr.io",
                "wasmcloud/echo",
                Some("0.3.4"),
                None,
            ),
            (
                "127.0.0.1:5000/echo:v1".into(),
                "127.0.0.1:5000",
                "echo",
                Some("v1"),
                None,
            ),
            ("localhost/a/b/c".into(), "localhost", "a/b/c", None, None),
            (
                "localhost:5000/a_b__c-d--e.f:t".into(),
                "localhost:5000",
                "a_b__c-d--e.f",
                Some("t"),
                None,
            ),
            (
                format!("reg.example/x@{digest}"),
                "reg.example",
                "x",
                None,
                Some(digest.as_str()),
            ),
            (
                format!("reg.example/x:v2@{digest}"),
                "reg.example",
                "x",
                Some("v2"),
                Some(digest.as_str()),
            ),
            (
                "Reg.Example/Echo:V1".into(),
                "reg.example",
                "echo",
                Some("v1"),
                None,
            ),
            (
                "[::1]:5000/echo:1".into(),
                "[::1]:5000",
                "echo",
                Some("1"),
                None,
            ),
            (
                "wasmcloud.azurecr.io/kvcounter:0.4.0".into(),
                "wasmcloud.azurecr.io",
                "kvcounter",
                Some("0.4.0"),
                None,
            ),
        ];
        for (input, registry, repository, tag, digest) in cases {
            let parsed = parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed.registry(), registry, "{input}");
            assert_eq!(parsed.repository(), repository, "{input}");
            assert_eq!(parsed.tag(), tag, "{input}");
            assert_eq!(parsed.digest(), digest, "{input}");
            // The canonical form parses back to the same reference.
            assert_eq!(
                parse(&parsed.to_string()).ok(),
                Some(parsed.clone()),
                "{input}"
            );
        }
    }

    #[test]
    fn refuses_invalid_references() {
        let cases = [
            "",
            "echo:1.0",
            "library/echo:1.0",
            "ghcr.io",
            "ghcr.io/",
            "ghcr.io/Echo Space:1",
            "ghcr.io/echo:",
            "ghcr.io/echo:-v1",
            "ghcr.io/echo:v1:v2",
            "ghcr.io//echo:1",
            "ghcr.io/echo/:1",
            "ghcr.io/-echo:1",
            "ghcr.io/ec...ho:1",
            "ghcr.io/echo@sha256:abc",
            "ghcr.io/echo@sha512:0123",
            "ghcr.io/echo@md5:0123456789abcdef0123456789abcdef",
            "ghcr.io:99999/echo:1",
            "ghcr.io:/echo:1",
            "-bad.io/echo:1",
            "[::1/echo:1",
        ];
        for input in cases {
            match parse(input) {
                Err(OciError::BadReference { input: got, .. }) => assert_eq!(got, input),
                other => panic!("{input:?} gave {other:?}"),
            }
        }
        let long_tag = format!("r.io/echo:{}", "t".repeat(129));
        assert!(matches!(
            parse(&long_tag),
            Err(OciError::BadReference { .. })
        ));
    }

    #[test]
    fn latest_means_the_tag_or_no_tag_without_a_digest() {
        let digest = format!("sha256:{HEX}");
        let cases = [
            ("r.io/echo:latest".to_string(), true),
            ("r.io/echo".to_string(), true),
            ("r.io/echo:LATEST".to_string(), true),
            ("r.io/echo:v1".to_string(), false),
            ("r.io/echo:latest1".to_string(), false),
            (format!("r.io/echo@{digest}"), false),
            (format!("r.io/echo:latest@{digest}"), false),
        ];
        for (input, latest) in cases {
            let parsed = parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed.is_latest(), latest, "{input}");
        }
    }

    #[test]
    fn tells_references_from_paths() {
        let cases = [
            ("oci://anything", true),
            ("oci://ghcr.io/echo:1", true),
            ("ghcr.io/echo:1", true),
            ("127.0.0.1:5000/echo:1", true),
            ("localhost/echo", true),
            ("localhost:5000/echo:1", true),
            ("dir.d/x.wasm", true),
            ("file://ghcr.io/echo:1", false),
            ("/abs/x.par", false),
            ("./x.wasm", false),
            ("../x.wasm", false),
            ("~/x.wasm", false),
            (".", false),
            ("..", false),
            ("x.wasm", false),
            ("build/x.wasm", false),
            ("ghcr.io/", false),
            ("ghcr.io", false),
            ("echo:1", false),
        ];
        for (input, expected) in cases {
            assert_eq!(reads_as_reference(input, |_| false), expected, "{input:?}");
        }
        // A path that exists is a file, even when it reads like a reference.
        let existing = |path: &Path| path == Path::new("dir.d/x.wasm");
        assert!(!reads_as_reference("dir.d/x.wasm", existing));
        assert!(reads_as_reference("oci://dir.d/x.wasm", existing));
    }

    #[test]
    fn classify_strips_file_and_parses_references() {
        assert_eq!(
            classify("file:///tmp/x.wasm").unwrap(),
            Source::File(PathBuf::from("/tmp/x.wasm"))
        );
        assert_eq!(
            classify("./x.par").unwrap(),
            Source::File(PathBuf::from("./x.par"))
        );
        match classify("oci://localhost:5000/echo:1").unwrap() {
            Source::Oci(r) => assert_eq!(r.to_string(), "localhost:5000/echo:1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify("ghcr.io/Bad Name:1"),
            Err(OciError::BadReference { .. })
        ));
    }
}
