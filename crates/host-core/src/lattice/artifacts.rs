//! What the `actor_ref` and `provider_ref` of `scale`, `upd` and `lp`
//! name: a file (`/path` or `file:///path`) when the host allows file
//! loading, as wasmCloud's `--allow-file-load`; any other scheme is a
//! clear refusal in the ack.

use std::path::PathBuf;

use wire::{CallError, CallResult};

/// Whether the control interface may start artifacts from this host's files.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileLoading {
    pub allowed: bool,
}

pub(super) struct Artifacts {
    files: FileLoading,
}

/// Where a reference points.
#[derive(Debug, Clone)]
pub(super) enum Located {
    File(PathBuf),
}

impl Artifacts {
    pub(super) fn new(files: FileLoading) -> Self {
        Self { files }
    }

    /// Where `reference` points, or why this host cannot load it: checked
    /// before a command is acked, so a bad reference is the ack's error.
    /// The one place that reads a reference.
    pub(super) fn locate(&self, reference: &str) -> CallResult<Located> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(CallError::denied("the reference is empty"));
        }
        let path = if let Some(path) = reference.strip_prefix("file://") {
            PathBuf::from(path)
        } else if reference.starts_with('/') || reference.starts_with('.') {
            PathBuf::from(reference)
        } else if let Some((scheme, _)) = reference.split_once("://") {
            return Err(CallError::denied(format!(
                "`{reference}`: the scheme `{scheme}://` is not supported (use file:// or an OCI reference)"
            )));
        } else {
            return Err(CallError::denied(format!(
                "`{reference}`: OCI references are not supported by this host yet; use a file:// reference"
            )));
        };
        if !self.files.allowed {
            return Err(CallError::denied(format!(
                "`{reference}`: this host does not load files for the lattice (start it with --allow-file-load)"
            )));
        }
        if !path.is_absolute() {
            return Err(CallError::denied(format!(
                "`{reference}`: a file reference must be an absolute path"
            )));
        }
        Ok(Located::File(path))
    }

    /// The wasm of an actor reference.
    pub(super) async fn actor(&self, located: Located) -> CallResult<Vec<u8>> {
        match located {
            Located::File(path) => tokio::fs::read(&path).await.map_err(|e| {
                CallError::not_found(format!("cannot read actor {}: {e}", path.display()))
            }),
        }
    }

    /// The archive file of a provider reference.
    pub(super) async fn provider(&self, located: Located) -> CallResult<PathBuf> {
        match located {
            Located::File(path) => {
                if !path.is_file() {
                    return Err(CallError::not_found(format!(
                        "no provider archive at {}",
                        path.display()
                    )));
                }
                Ok(path)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_files_when_allowed_and_other_schemes_are_refused() {
        let allowed = Artifacts::new(FileLoading { allowed: true });
        assert!(matches!(
            allowed.locate("file:///tmp/a.wasm"),
            Ok(Located::File(p)) if p == std::path::Path::new("/tmp/a.wasm")
        ));
        assert!(allowed.locate("/tmp/a.wasm").is_ok());
        let e = allowed.locate("https://example.com/a.wasm").err().unwrap();
        assert!(e.message.contains("https://"), "{e}");
        assert!(allowed.locate("ghcr.io/x/y:1").is_err());
        assert!(allowed.locate("").is_err());
        let refused = Artifacts::new(FileLoading::default());
        let e = refused.locate("/tmp/a.wasm").err().unwrap();
        assert!(e.message.contains("--allow-file-load"), "{e}");
    }
}
