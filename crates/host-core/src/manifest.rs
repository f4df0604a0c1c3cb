//! The declarative manifest `host-core run --manifest FILE` applies: actors,
//! providers and links, in TOML.
//!
//! Everything is read and checked first (files, claims, archives, names,
//! contracts), and each problem is reported with its line. Only then is the
//! manifest applied; if applying fails, what was started is stopped again, so
//! a manifest is applied whole or not at all.
//!
//! Values may use `${VAR}` or `${VAR:-default}` from the environment (ports).
//!
//! An entry's `file` (or `image`) is a path relative to the manifest, or an
//! OCI reference (`registry/repo:tag`, `oci://...`, `...@sha256:...`),
//! pulled while the manifest is read.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use toml::Spanned;
use wire::provider::Link;

use crate::{
    claims,
    host::{
        artifacts::{ActorSource, ArchiveSource},
        Host,
    },
    par,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    #[serde(default)]
    actors: Vec<ActorEntry>,
    #[serde(default)]
    providers: Vec<ProviderEntry>,
    #[serde(default)]
    links: Vec<LinkEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActorEntry {
    name: Spanned<String>,
    #[serde(alias = "image")]
    file: Spanned<String>,
    #[serde(default = "one")]
    count: Spanned<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    name: Spanned<String>,
    #[serde(alias = "image")]
    file: Spanned<String>,
    #[serde(default = "default_link")]
    link_name: String,
    #[serde(default)]
    config: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkEntry {
    actor: Spanned<String>,
    provider: Spanned<String>,
    contract: Spanned<String>,
    #[serde(default = "default_link")]
    link_name: String,
    #[serde(default)]
    values: BTreeMap<String, toml::Value>,
}

/// A manifest is a page of TOML; a larger file is not one.
const MAX_MANIFEST_LEN: u64 = 16 * 1024 * 1024;

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

fn default_link() -> String {
    "default".into()
}

/// A checked manifest, ready to apply.
pub struct Manifest {
    actors: Vec<(String, ActorSource, u32)>,
    providers: Vec<(String, ArchiveSource, String, String)>,
    links: Vec<Link>,
}

/// Pulls an OCI reference a manifest names (the run command passes its
/// registry client).
pub type Pull<'a> = &'a dyn Fn(&str, oci::ArtifactKind) -> wire::CallResult<oci::Fetched>;

/// For readers of manifests that have no registry client.
pub fn no_registry(reference: &str, _: oci::ArtifactKind) -> wire::CallResult<oci::Fetched> {
    Err(wire::CallError::unavailable(format!(
        "{reference}: no registry client to pull it with"
    )))
}

/// Line numbers (1-based) of byte offsets in the manifest text.
struct Lines<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Lines<'_> {
    fn at(&self, span: Range<usize>) -> String {
        let line = self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1;
        format!("{}:{line}", self.path.display())
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` from the environment.
fn expand(text: &str, path: &Path) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let line = text[..text.len() - rest.len() + start]
            .matches('\n')
            .count()
            + 1;
        let end = after
            .find('}')
            .ok_or_else(|| anyhow!("{}:{line}: `${{` without a closing `}}`", path.display()))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        match (std::env::var(name), default) {
            (Ok(value), _) => out.push_str(&value),
            (Err(_), Some(default)) => out.push_str(default),
            (Err(_), None) => bail!(
                "{}:{line}: the environment variable {name} is not set and has no default (write ${{{name}:-DEFAULT}})",
                path.display()
            ),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn value_to_string(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads and checks a manifest; nothing is started.
pub fn load(
    path: &Path,
    allowed_issuers: &[String],
    provider_cache: &Path,
    pull: Pull<'_>,
) -> Result<Manifest> {
    let raw = par::read_regular_file(path, MAX_MANIFEST_LEN)
        .map_err(|e| anyhow!("cannot read the manifest {}: {e}", path.display()))?;
    let raw = String::from_utf8(raw).map_err(|_| {
        anyhow!(
            "cannot read the manifest {}: it is not UTF-8",
            path.display()
        )
    })?;
    let text = expand(&raw, path)?;
    let file: ManifestFile = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| Lines { path, text: &text }.at(s))
            .unwrap_or_else(|| path.display().to_string());
        anyhow!("{at}: {}", e.message())
    })?;
    let lines = Lines { path, text: &text };
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |file: &str| -> PathBuf {
        let file = file.strip_prefix(oci::FILE_SCHEME).unwrap_or(file);
        let p = Path::new(file);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    // A reference, unless a file of that name is beside the manifest.
    let is_reference = |file: &str| {
        file.starts_with(oci::OCI_SCHEME)
            || (oci::looks_like_reference(file) && !resolve(file).exists())
    };

    let mut actor_keys: HashMap<String, (String, Vec<String>)> = HashMap::new();
    let mut actors = Vec::new();
    for entry in &file.actors {
        let at = lines.at(entry.name.span());
        if actor_keys.contains_key(entry.name.get_ref()) {
            bail!("{at}: actor `{}` is named twice", entry.name.get_ref());
        }
        if *entry.count.get_ref() == 0 {
            bail!("{}: count must be at least 1", lines.at(entry.count.span()));
        }
        let file_at = lines.at(entry.file.span());
        let name = entry.file.get_ref();
        let (wasm, image_ref) = if is_reference(name) {
            let fetched = pull(name, oci::ArtifactKind::Actor)
                .map_err(|e| anyhow!("{file_at}: {}", e.message))?;
            (fetched.bytes, Some(name.clone()))
        } else {
            let full = resolve(name);
            // Not a FIFO, a device, or more than a worker can be sent.
            let wasm = par::read_regular_file(&full, wire::MAX_PAYLOAD as u64)
                .map_err(|e| anyhow!("{file_at}: cannot read {}: {e}", full.display()))?;
            (wasm, None)
        };
        let verified = claims::verify(&wasm, allowed_issuers)
            .map_err(|e| anyhow!("{file_at}: actor refused: {e}"))?;
        actor_keys.insert(
            entry.name.get_ref().clone(),
            (verified.key().to_owned(), verified.caps()),
        );
        actors.push((
            verified.key().to_owned(),
            ActorSource { wasm, image_ref },
            *entry.count.get_ref(),
        ));
    }

    let mut provider_keys: HashMap<String, (String, String)> = HashMap::new();
    let mut providers = Vec::new();
    for entry in &file.providers {
        let at = lines.at(entry.name.span());
        if provider_keys.contains_key(entry.name.get_ref()) {
            bail!("{at}: provider `{}` is named twice", entry.name.get_ref());
        }
        let file_at = lines.at(entry.file.span());
        let name = entry.file.get_ref();
        let (full, bytes, image_ref) = if is_reference(name) {
            let fetched = pull(name, oci::ArtifactKind::Provider)
                .map_err(|e| anyhow!("{file_at}: {}", e.message))?;
            (fetched.path, fetched.bytes, Some(name.clone()))
        } else {
            let full = resolve(name);
            let bytes = par::read_file(&full)
                .map_err(|e| anyhow!("{file_at}: cannot read {}: {e}", full.display()))?;
            (full, bytes, None)
        };
        let extracted = par::verify_and_extract(&bytes, provider_cache, allowed_issuers)
            .map_err(|e| anyhow!("{file_at}: provider refused: {e}"))?;
        let config = serde_json::to_string(&entry.config.clone().unwrap_or_default())?;
        provider_keys.insert(
            entry.name.get_ref().clone(),
            (extracted.key.clone(), extracted.metadata.capid.clone()),
        );
        let full = std::fs::canonicalize(&full).unwrap_or(full);
        providers.push((
            extracted.key,
            ArchiveSource {
                path: full,
                image_ref,
            },
            entry.link_name.clone(),
            config,
        ));
    }

    let mut links = Vec::new();
    for entry in &file.links {
        let actor_at = lines.at(entry.actor.span());
        let (actor_id, caps) = match actor_keys.get(entry.actor.get_ref()) {
            Some(found) => found.clone(),
            None if is_key(entry.actor.get_ref(), 'M') => (entry.actor.get_ref().clone(), vec![]),
            None => bail!(
                "{actor_at}: no actor named `{}` in this manifest (and it is not an M... key)",
                entry.actor.get_ref()
            ),
        };
        let provider_at = lines.at(entry.provider.span());
        let (provider_id, capid) = match provider_keys.get(entry.provider.get_ref()) {
            Some(found) => found.clone(),
            None if is_key(entry.provider.get_ref(), 'V') => (
                entry.provider.get_ref().clone(),
                entry.contract.get_ref().clone(),
            ),
            None => bail!(
                "{provider_at}: no provider named `{}` in this manifest (and it is not a V... key)",
                entry.provider.get_ref()
            ),
        };
        let contract = entry.contract.get_ref();
        let contract_at = lines.at(entry.contract.span());
        if *contract != capid {
            bail!(
                "{contract_at}: provider `{}` implements {capid}, not {contract}",
                entry.provider.get_ref()
            );
        }
        if !caps.is_empty() && !caps.contains(contract) {
            bail!(
                "{contract_at}: actor `{}` may not use {contract}: it is not in its claims' caps",
                entry.actor.get_ref()
            );
        }
        links.push(Link {
            actor_id,
            provider_id,
            contract_id: contract.clone(),
            link_name: entry.link_name.clone(),
            values: entry
                .values
                .iter()
                .map(|(k, v)| (k.clone(), value_to_string(v)))
                .collect(),
        });
    }
    Ok(Manifest {
        actors,
        providers,
        links,
    })
}

fn is_key(text: &str, prefix: char) -> bool {
    text.len() == 56 && text.starts_with(prefix)
}

impl Manifest {
    /// Applies the manifest whole, or undoes what it started and fails.
    pub async fn apply(self, host: &Arc<Host>) -> Result<()> {
        let mut started_actors = Vec::new();
        let mut started_providers = Vec::new();
        let mut put_links = Vec::new();
        let result: wire::CallResult<()> = async {
            // Links first: providers learn them at start, actors need no order.
            for link in &self.links {
                host.link_put(link.clone()).await?;
                put_links.push(link.clone());
            }
            for (key, source, count) in self.actors {
                host.start_actor_source(source, count).await?;
                started_actors.push(key);
            }
            for (key, source, link_name, config) in self.providers {
                host.start_provider_source(source, link_name.clone(), config)
                    .await?;
                started_providers.push((key, link_name));
            }
            Ok(())
        }
        .await;
        if let Err(reason) = result {
            for (key, link_name) in started_providers {
                let _ = host.stop_provider(&key, &link_name).await;
            }
            for key in started_actors {
                let _ = host.stop_actor(&key).await;
            }
            for link in put_links {
                let _ = host
                    .link_del(&link.actor_id, &link.contract_id, &link.link_name)
                    .await;
            }
            bail!("the manifest could not be applied, nothing of it is left running: {reason}");
        }
        Ok(())
    }

    pub fn summary(&self) -> String {
        format!(
            "{} actor(s), {} provider(s), {} link(s)",
            self.actors.len(),
            self.providers.len(),
            self.links.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables_with_defaults() {
        std::env::set_var("MANIFEST_TEST_PORT", "9999");
        let p = Path::new("m.toml");
        assert_eq!(
            expand(
                "a = \"${MANIFEST_TEST_PORT}\"\nb = \"${NOPE_NOT_SET:-80}\"",
                p
            )
            .unwrap(),
            "a = \"9999\"\nb = \"80\""
        );
        let err = expand("x = 1\ny = \"${NOPE_NOT_SET}\"", p).unwrap_err();
        assert!(err.to_string().starts_with("m.toml:2:"), "{err}");
    }

    #[test]
    fn syntax_and_reference_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("manifest-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        std::fs::write(&path, "[[actors]]\nname = \"a\"\nfile = \n").unwrap();
        let err = load(&path, &[], &dir, &no_registry)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("m.toml:3"), "{err}");

        std::fs::write(&path, "[[actors]]\nname = \"a\"\nfile = \"missing.wasm\"\n").unwrap();
        let err = load(&path, &[], &dir, &no_registry)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("m.toml:3") && err.contains("cannot read"),
            "{err}"
        );

        std::fs::write(
            &path,
            "[[links]]\nactor = \"ghost\"\nprovider = \"p\"\ncontract = \"c\"\n",
        )
        .unwrap();
        let err = load(&path, &[], &dir, &no_registry)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("m.toml:2") && err.contains("ghost"), "{err}");

        std::fs::write(
            &path,
            "[[actors]]\nname = \"a\"\nfile = \"x\"\ncolour = 1\n",
        )
        .unwrap();
        let err = load(&path, &[], &dir, &no_registry)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("m.toml:4") && err.contains("colour"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A manifest naming a device or a FIFO (`/dev/zero` never ends, a FIFO
    /// blocks) is refused with its line, not read until memory runs out.
    #[test]
    fn files_that_are_not_regular_are_refused() {
        let dir = std::env::temp_dir().join(format!("manifest-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        for (table, file) in [
            ("actors", "/dev/zero"),
            ("providers", "/dev/zero"),
            ("actors", "/"),
        ] {
            std::fs::write(
                &path,
                format!("[[{table}]]\nname = \"a\"\nfile = \"{file}\"\n"),
            )
            .unwrap();
            let err = load(&path, &[], &dir, &no_registry)
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("m.toml:3") && err.contains("not a regular file"),
                "{err}"
            );
        }
        let err = load(Path::new("/dev/zero"), &[], &dir, &no_registry)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
