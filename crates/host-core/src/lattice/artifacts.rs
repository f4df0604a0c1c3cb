//! What the `actor_ref` and `provider_ref` of `scale`, `upd` and `lp`
//! name: an OCI reference (pulled by the host's registry client, with its
//! policy and credentials), or a file (`/path` or `file:///path`) when the
//! host allows file loading, as wasmCloud's `--allow-file-load`. Any other
//! scheme is a clear refusal in the ack.

use wire::{control::Artifact, CallError, CallResult};

/// Whether the control interface may start artifacts from this host's files.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileLoading {
    pub allowed: bool,
}

pub(super) struct Artifacts {
    files: FileLoading,
}

impl Artifacts {
    pub(super) fn new(files: FileLoading) -> Self {
        Self { files }
    }

    /// Where `reference` points, or why this host cannot load it: checked
    /// before a command is acked, so a bad reference is the ack's error.
    /// The one place that reads a reference; the host's `artifacts` then
    /// fetch what it names.
    pub(super) fn locate(&self, reference: &str) -> CallResult<Artifact> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(CallError::denied("the reference is empty"));
        }
        let path = if let Some(path) = reference.strip_prefix(oci::FILE_SCHEME) {
            path
        } else if reference.starts_with('/') || reference.starts_with('.') {
            reference
        } else if let Some((scheme, _)) = reference
            .split_once("://")
            .filter(|_| !reference.starts_with(oci::OCI_SCHEME))
        {
            return Err(CallError::denied(format!(
                "`{reference}`: the scheme `{scheme}://` is not supported (use file:// or an OCI reference)"
            )));
        } else {
            // Checked now, so a malformed reference is the ack's error.
            oci::parse(reference).map_err(|e| crate::host::artifacts::oci_error(&e))?;
            return Ok(Artifact::Reference(reference.to_owned()));
        };
        if !self.files.allowed {
            return Err(CallError::denied(format!(
                "`{reference}`: this host does not load files for the lattice (start it with --allow-file-load)"
            )));
        }
        if !std::path::Path::new(path).is_absolute() {
            return Err(CallError::denied(format!(
                "`{reference}`: a file reference must be an absolute path"
            )));
        }
        Ok(Artifact::Path(path.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_files_when_allowed_and_other_schemes_are_refused() {
        let allowed = Artifacts::new(FileLoading { allowed: true });
        assert_eq!(
            allowed.locate("file:///tmp/a.wasm").unwrap(),
            Artifact::Path("/tmp/a.wasm".into())
        );
        assert!(allowed.locate("/tmp/a.wasm").is_ok());
        let e = allowed.locate("https://example.com/a.wasm").err().unwrap();
        assert!(e.message.contains("https://"), "{e}");
        assert_eq!(
            allowed.locate("ghcr.io/x/y:1").unwrap(),
            Artifact::Reference("ghcr.io/x/y:1".into())
        );
        assert!(allowed.locate("oci://ghcr.io/x/y:1").is_ok());
        assert!(allowed.locate("ghcr.io/x/y@sha256:nothex").is_err());
        assert!(allowed.locate("").is_err());
        let refused = Artifacts::new(FileLoading::default());
        let e = refused.locate("/tmp/a.wasm").err().unwrap();
        assert!(e.message.contains("--allow-file-load"), "{e}");
    }
}
