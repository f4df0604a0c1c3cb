//! What a [`Client`](crate::Client) is allowed to do, and with which credentials.

use std::fmt;
use std::time::Duration;

/// The default cap on one layer: 256 MiB.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 256 * 1024 * 1024;

/// The rules a client fetches and pushes by, as the wasmCloud host's OCI options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Allow the tag `latest`, explicit or implied by a reference without a tag.
    pub allow_latest: bool,
    /// Registries (`host[:port]`) that may be spoken to over plain HTTP; every
    /// other one only over HTTPS.
    pub allowed_insecure: Vec<String>,
    /// A layer larger than this is refused, while it downloads.
    pub max_layer_bytes: u64,
    /// How long to wait for a connection to a registry.
    pub connect_timeout: Duration,
    /// How long one read from a registry may take.
    pub read_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_latest: false,
            allowed_insecure: Vec::new(),
            max_layer_bytes: DEFAULT_MAX_LAYER_BYTES,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

impl Policy {
    /// Whether `registry` is listed in `allowed_insecure` (case and an
    /// `http://` prefix or trailing `/` in the list do not matter).
    pub fn is_insecure_allowed(&self, registry: &str) -> bool {
        self.allowed_insecure
            .iter()
            .any(|listed| normalize_registry(listed) == normalize_registry(registry))
    }
}

/// The form registries are compared and keyed in: trimmed, lowercase, no
/// scheme, no trailing `/`.
pub(crate) fn normalize_registry(registry: &str) -> String {
    let lower = registry.trim().to_lowercase();
    let bare = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .unwrap_or(&lower);
    bare.trim_end_matches('/').to_string()
}

/// Credentials for one registry, as the lattice's `registries.put` carries
/// them (`username` and `password`, or a `token`).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic authentication (also used to get a bearer token when the
    /// registry asks for one).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// A bearer token, sent as it is.
    Token(String),
}

impl Credentials {
    pub(crate) fn to_auth(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        match self {
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Token(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// Never prints a secret.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token(_) => f.debug_tuple("Token").field(&"<redacted>").finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_list_matches_registry_hosts() {
        let policy = Policy {
            allowed_insecure: vec!["LocalHost:5000".into(), "http://127.0.0.1:5001/".into()],
            ..Policy::default()
        };
        assert!(policy.is_insecure_allowed("localhost:5000"));
        assert!(policy.is_insecure_allowed("127.0.0.1:5001"));
        assert!(!policy.is_insecure_allowed("127.0.0.1:5000"));
        assert!(!policy.is_insecure_allowed("localhost"));
    }

    #[test]
    fn debug_hides_secrets() {
        let basic = Credentials::Basic {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let token = Credentials::Token("s3cr3t".into());
        let printed = format!("{basic:?} {token:?}");
        assert!(printed.contains("alice"));
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cr3t"),
            "{printed}"
        );
    }
}
