//! What can go wrong, one variant per kind of failure, each a one-line message
//! that names the reference and says what to do. Callers match on the variant.

use std::path::PathBuf;

use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};

use crate::kind::ArtifactKind;

/// Every failure of parsing, fetching, pushing or caching.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The string is not a valid OCI reference.
    #[error("`{input}` is not a valid OCI reference: {reason} (expected registry/repository:tag or registry/repository@sha256:digest)")]
    BadReference {
        /// The string as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The tag `latest`, explicit or implied, and the policy does not allow it.
    #[error("{reference} {}: pin a version tag or a digest, or allow latest with --oci-allow-latest", if *.implied { "has no tag, which means `latest`" } else { "is tagged `latest`" })]
    LatestRefused {
        /// The reference (canonical form).
        reference: String,
        /// `true` when the reference had no tag at all.
        implied: bool,
    },

    /// The registry answers only plain HTTP and is not in `allowed_insecure`.
    #[error("registry {registry} speaks only plain HTTP; list it in --oci-allowed-insecure to allow that (for {reference})")]
    InsecureRefused {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
    },

    /// The registry cannot be reached: DNS, connection refused, timeout.
    #[error("registry {registry} cannot be reached for {reference} ({reason}); check the address and that the registry is up")]
    Unreachable {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// The transport error, in a few words.
        reason: String,
    },

    /// The registry has no such repository, tag or digest.
    #[error("{reference} was not found in registry {registry}: check the repository and the tag or digest")]
    NotFound {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
    },

    /// The registry refused the credentials (or asked for some and had none).
    #[error("registry {registry} denied access to {reference}: set or correct the credentials for {registry}")]
    Denied {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
    },

    /// The artifact's layer is not of a media type this kind accepts.
    #[error("{reference} is not {kind}: its layer has media type {found}, expected {}", .kind.accepted_layer_media_types().join(" or "))]
    WrongMediaType {
        /// The reference.
        reference: String,
        /// What was asked for.
        kind: ArtifactKind,
        /// The media type found.
        found: String,
    },

    /// The manifest is not one of a single-layer artifact.
    #[error("{reference} is not a wasmCloud artifact: {reason}")]
    BadManifest {
        /// The reference.
        reference: String,
        /// What is wrong with the manifest.
        reason: String,
    },

    /// Content did not hash to its digest.
    #[error("{reference}: digest mismatch, expected {expected} but the {} has {actual}", if *.in_cache { "cached copy (now removed; the registry could not be reached to fetch it again)" } else { "registry's content" })]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// The digest the content should have.
        expected: String,
        /// The digest it has.
        actual: String,
        /// `true` when the bad copy was the cache's.
        in_cache: bool,
    },

    /// The layer is larger than the policy's `max_layer_bytes`.
    #[error("{reference}: the layer is larger than the limit of {limit} bytes; nothing was kept")]
    TooLarge {
        /// The reference.
        reference: String,
        /// The limit.
        limit: u64,
    },

    /// The cache directory could not be read or written.
    #[error("OCI cache {}: {source}", .path.display())]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Any other registry failure (a server error, a protocol violation).
    #[error("registry {registry} failed for {reference}: {reason}")]
    Registry {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// What the registry or the protocol client said, on one line.
        reason: String,
    },
}

impl OciError {
    pub(crate) fn cache(path: impl Into<PathBuf>, source: std::io::Error) -> OciError {
        OciError::Cache {
            path: path.into(),
            source,
        }
    }
}

/// Whether an `oci-client` error is a transport failure (no HTTP answer:
/// DNS, refused, reset, timeout, TLS handshake), as opposed to an answer.
pub(crate) fn is_transport(err: &OciDistributionError) -> bool {
    any_in_chain(err, &mut |current| {
        if let Some(reqwest) = current.downcast_ref::<reqwest::Error>() {
            return reqwest.is_connect() || reqwest.is_timeout();
        }
        current.downcast_ref::<std::io::Error>().is_some_and(|io| {
            use std::io::ErrorKind::*;
            matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | TimedOut
                    | BrokenPipe
                    | HostUnreachable
                    | NetworkUnreachable
                    | UnexpectedEof
            )
        })
    })
}

/// Whether an error is a registry API's answer (200 aside): 401, 403, 404
/// or an OCI error envelope. An HTTPS server's "400: plain HTTP to an HTTPS
/// port" is not one, so a TLS failure (a bad certificate) against it is not
/// mistaken for a plain-HTTP registry.
pub(crate) fn is_registry_answer(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::RegistryError { .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => matches!(code, 401 | 403 | 404),
        _ => false,
    }
}

/// Whether `test` holds for an error or anything it wraps. `source()` is
/// not enough: a transparent variant and `io::Error::other` both skip the
/// error they wrap, so those are opened by hand.
fn any_in_chain(
    err: &(dyn std::error::Error + 'static),
    test: &mut dyn FnMut(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    if test(err) {
        return true;
    }
    let wrapped: Option<&(dyn std::error::Error + 'static)> =
        match err.downcast_ref::<OciDistributionError>() {
            Some(OciDistributionError::RequestError(inner)) => Some(inner),
            Some(OciDistributionError::IoError(inner)) => Some(inner),
            Some(OciDistributionError::DigestError(inner)) => Some(inner),
            _ => err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
        };
    if let Some(inner) = wrapped {
        if any_in_chain(inner, test) {
            return true;
        }
    }
    err.source()
        .is_some_and(|source| any_in_chain(source, test))
}

/// The innermost cause of an error, on one line: `Connection refused (os error 111)`
/// says more than `error sending request for url (...)`.
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    one_line(&current.to_string())
}

/// Newlines and runs of white space folded to single spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The registry's error codes that mean "no such thing" and "not allowed".
fn envelope_kind(codes: &[&OciErrorCode]) -> Option<Answer> {
    use OciErrorCode::*;
    if codes
        .iter()
        .any(|c| matches!(c, ManifestUnknown | NameUnknown | BlobUnknown | NotFound))
    {
        return Some(Answer::NotFound);
    }
    if codes.iter().any(|c| matches!(c, Unauthorized | Denied)) {
        return Some(Answer::Denied);
    }
    None
}

enum Answer {
    NotFound,
    Denied,
}

/// Turns an `oci-client` error for `reference` into the matching kind. A
/// transport failure becomes [`OciError::Unreachable`]; telling a plain-HTTP
/// registry apart is the caller's job (it needs a second request).
pub(crate) fn classify(err: OciDistributionError, reference: &str, registry: &str) -> OciError {
    let reference = reference.to_string();
    let registry = registry.to_string();
    if is_transport(&err) {
        return OciError::Unreachable {
            reason: root_cause(&err),
            reference,
            registry,
        };
    }
    if let Some((expected, actual)) = find_digest_error(&err) {
        return OciError::DigestMismatch {
            reference,
            expected,
            actual,
            in_cache: false,
        };
    }
    let answer = match &err {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Some(Answer::Denied),
        OciDistributionError::ImageManifestNotFoundError(_) => Some(Answer::NotFound),
        OciDistributionError::ServerError { code, .. } => match code {
            401 | 403 => Some(Answer::Denied),
            404 => Some(Answer::NotFound),
            _ => None,
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope_kind(&envelope.errors.iter().map(|e| &e.code).collect::<Vec<_>>())
        }
        _ => None,
    };
    match answer {
        Some(Answer::NotFound) => OciError::NotFound {
            reference,
            registry,
        },
        Some(Answer::Denied) => OciError::Denied {
            reference,
            registry,
        },
        None => OciError::Registry {
            reason: one_line(&err.to_string()),
            reference,
            registry,
        },
    }
}

/// A digest verification failure anywhere in the chain (a blob stream
/// reports it wrapped in an I/O error).
fn find_digest_error(err: &OciDistributionError) -> Option<(String, String)> {
    let mut found = None;
    any_in_chain(
        err,
        &mut |current| match current.downcast_ref::<DigestError>() {
            Some(DigestError::VerificationError { expected, actual }) => {
                found = Some((expected.clone(), actual.clone()));
                true
            }
            _ => false,
        },
    );
    found
}
