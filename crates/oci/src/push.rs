//! Pushing, as `wash push` does: one layer with the kind's media type, a
//! config blob `{}` with the kind's config media type, an OCI image manifest.

use oci_client::manifest::{OciDescriptor, OciImageManifest};
use reqwest::header::HeaderValue;

use crate::client::Client;
use crate::digest::Digest;
use crate::error::OciError;
use crate::kind::{ArtifactKind, MANIFEST_MEDIA_TYPE};

/// The config blob `wash push` sends when given none.
const EMPTY_CONFIG: &[u8] = b"{}";

impl Client {
    /// Pushes `bytes` as an artifact of `kind` to `reference` (which needs a
    /// tag; `latest` only when the policy allows it) and returns the
    /// manifest's digest, `sha256:...`. The bytes are not inspected: the
    /// caller says what they are.
    pub async fn push(
        &self,
        reference: &str,
        kind: ArtifactKind,
        bytes: Vec<u8>,
    ) -> Result<String, OciError> {
        let reference = self.checked_reference(reference)?;
        if reference.digest().is_some() {
            return Err(OciError::BadReference {
                input: reference.to_string(),
                reason: "a push names a tag, not a digest".into(),
            });
        }
        let layer = descriptor(kind.layer_media_type(), &bytes);
        let config = descriptor(kind.config_media_type(), EMPTY_CONFIG);
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
            config: config.clone(),
            layers: vec![layer.clone()],
            ..OciImageManifest::default()
        };
        let body = serde_json::to_vec(&manifest).map_err(|e| OciError::Registry {
            reference: reference.to_string(),
            registry: reference.registry().to_string(),
            reason: format!("cannot encode the manifest: {e}"),
        })?;

        let client = self.protocol_client(&reference)?;
        let oci_ref = reference.to_oci();
        client
            .store_auth_if_needed(
                oci_ref.resolve_registry(),
                &self.auth_for(reference.registry()),
            )
            .await;
        let pushed = async {
            client.push_blob(&oci_ref, bytes, &layer.digest).await?;
            client
                .push_blob(&oci_ref, EMPTY_CONFIG.to_vec(), &config.digest)
                .await?;
            client
                .push_manifest_raw(
                    &oci_ref,
                    body.clone(),
                    HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
                )
                .await
        }
        .await;
        match pushed {
            Ok(_url) => Ok(Digest::of(&body).to_string()),
            Err(err) => Err(self.explain(&reference, err).await),
        }
    }
}

fn descriptor(media_type: &str, bytes: &[u8]) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_string(),
        digest: Digest::of(bytes).to_string(),
        size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
        ..OciDescriptor::default()
    }
}
