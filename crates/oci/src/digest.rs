//! `sha256:<64 lowercase hex>` digests, validated before they name a file.

use std::fmt;

use sha2::{Digest as _, Sha256};

const PREFIX: &str = "sha256:";

/// A validated sha256 content digest. Digests come from manifests, that is
/// from the registry, and name files in the cache: only this shape may.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Digest(String);

impl Digest {
    /// `sha256:` and 64 lowercase hexadecimal digits, or `None`.
    pub(crate) fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix(PREFIX)?;
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| Digest(text.to_string()))
    }

    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Digest {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Digest {
        Digest(format!("{PREFIX}{}", hex::encode(hasher.finalize())))
    }

    /// The hexadecimal part: the blob's file name in the cache.
    pub(crate) fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_with_64_lowercase_hex_digits() {
        let hex = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex}")).is_some());
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "a".repeat(65)),
            format!("sha512:{hex}"),
            format!("sha256:../{}", "a".repeat(61)),
            hex.clone(),
        ] {
            assert!(Digest::parse(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn digest_of_bytes() {
        // sha256("") is well known.
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
