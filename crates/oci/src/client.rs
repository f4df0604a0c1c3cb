//! The client: policy, credentials per registry, and fetching through the cache.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Once, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;

use crate::cache::{Cache, FinishError, Lookup, TagEntry, MAX_MANIFEST_BYTES};
use crate::config::{normalize_registry, Credentials, Policy};
use crate::digest::Digest;
use crate::error::{self, OciError};
use crate::kind::{ArtifactKind, DOCKER_MANIFEST_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use crate::reference::{self, Reference};

/// How long the plain-HTTP probe of a registry that failed over HTTPS may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// An artifact, fetched and verified.
#[derive(Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The layer's bytes, hashed and found equal to `digest`.
    pub bytes: Vec<u8>,
    /// The layer's file in the cache (for callers that want a path; read
    /// `bytes` to use content that was verified).
    pub path: PathBuf,
    /// The layer's digest, `sha256:...`.
    pub digest: String,
    /// The manifest's digest, `sha256:...`: what the tag pointed at.
    pub manifest_digest: String,
    /// The layer's media type.
    pub media_type: String,
    /// Whether the layer came from the cache rather than the registry.
    pub from_cache: bool,
    /// Something the caller should log: the registry was unreachable and a
    /// cached tag was served, or a corrupt cached copy was replaced.
    pub warning: Option<String>,
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("bytes", &format_args!("{} bytes", self.bytes.len()))
            .field("path", &self.path)
            .field("digest", &self.digest)
            .field("manifest_digest", &self.manifest_digest)
            .field("media_type", &self.media_type)
            .field("from_cache", &self.from_cache)
            .field("warning", &self.warning)
            .finish()
    }
}

/// Fetches and pushes actors and provider archives; see the crate docs.
pub struct Client {
    pub(crate) cache: Cache,
    pub(crate) policy: Policy,
    credentials: RwLock<HashMap<String, Credentials>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registries: Vec<String> = self.read_credentials().keys().cloned().collect();
        f.debug_struct("Client")
            .field("cache", &self.cache)
            .field("policy", &self.policy)
            .field("credentials_for", &registries)
            .finish()
    }
}

/// What the cache had for a manifest digest.
enum Cached {
    Hit(Fetched),
    Miss,
    /// A cached blob was corrupt (and removed): the error to report if the
    /// registry cannot supply a good copy.
    Corrupt(OciError),
}

impl Client {
    /// A client caching under `cache_dir` (created owner-only if missing),
    /// with `credentials` keyed by registry host (`host[:port]`).
    pub fn new(
        cache_dir: impl AsRef<Path>,
        policy: Policy,
        credentials: HashMap<String, Credentials>,
    ) -> Result<Client, OciError> {
        install_crypto_provider();
        let credentials = credentials
            .into_iter()
            .map(|(registry, creds)| (normalize_registry(&registry), creds))
            .collect();
        Ok(Client {
            cache: Cache::open(cache_dir.as_ref())?,
            policy,
            credentials: RwLock::new(credentials),
        })
    }

    /// Sets the credentials for `registry` (as the lattice's
    /// `registries.put` does); later fetches and pushes use them.
    pub fn set_credentials(&self, registry: &str, credentials: Credentials) {
        self.credentials
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(normalize_registry(registry), credentials);
    }

    /// Forgets the credentials for `registry`: it is then accessed anonymously.
    pub fn remove_credentials(&self, registry: &str) {
        self.credentials
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&normalize_registry(registry));
    }

    /// The policy this client was made with.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn read_credentials(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Credentials>> {
        self.credentials
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn auth_for(&self, registry: &str) -> RegistryAuth {
        self.read_credentials()
            .get(&normalize_registry(registry))
            .map_or(RegistryAuth::Anonymous, Credentials::to_auth)
    }

    /// Parses `input` and applies the `latest` rule.
    pub(crate) fn checked_reference(&self, input: &str) -> Result<Reference, OciError> {
        let reference = reference::parse(input)?;
        if reference.is_latest() && !self.policy.allow_latest {
            return Err(OciError::LatestRefused {
                reference: reference.to_string(),
                implied: reference.tag().is_none(),
            });
        }
        Ok(reference)
    }

    /// A protocol client for one operation: plain HTTP for a registry in
    /// `allowed_insecure`, HTTPS for every other. A new one each time, so
    /// credentials set since are the ones used.
    pub(crate) fn protocol_client(
        &self,
        reference: &Reference,
    ) -> Result<oci_client::Client, OciError> {
        let protocol = if self.policy.is_insecure_allowed(reference.registry()) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        self.build_protocol_client(
            reference,
            protocol,
            self.policy.connect_timeout,
            self.policy.read_timeout,
        )
    }

    fn build_protocol_client(
        &self,
        reference: &Reference,
        protocol: ClientProtocol,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<oci_client::Client, OciError> {
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(connect_timeout),
            read_timeout: Some(read_timeout),
            ..ClientConfig::default()
        };
        oci_client::Client::try_from(config)
            .map_err(|e| error::classify(e, &reference.to_string(), reference.registry()))
    }

    /// Explains a failed request: a transport failure over HTTPS to a
    /// registry that answers plain HTTP is [`OciError::InsecureRefused`];
    /// the probe is anonymous, so no credentials travel in the clear.
    pub(crate) async fn explain(
        &self,
        reference: &Reference,
        err: oci_client::errors::OciDistributionError,
    ) -> OciError {
        let name = reference.to_string();
        if error::is_transport(&err) && !self.policy.is_insecure_allowed(reference.registry()) {
            if let Ok(probe) = self.build_protocol_client(
                reference,
                ClientProtocol::Http,
                PROBE_TIMEOUT,
                PROBE_TIMEOUT,
            ) {
                let answer = probe
                    .fetch_manifest_digest(&reference.to_oci(), &RegistryAuth::Anonymous)
                    .await;
                let answered = match &answer {
                    Ok(_) => true,
                    Err(probe_err) => error::is_registry_answer(probe_err),
                };
                if answered {
                    return OciError::InsecureRefused {
                        reference: name,
                        registry: reference.registry().to_string(),
                    };
                }
            }
        }
        error::classify(err, &name, reference.registry())
    }

    /// Fetches an actor or a provider archive by reference (tag or digest).
    ///
    /// A `@sha256:` reference is served from the cache when its manifest and
    /// layer are there (verified), without the registry. A tag is resolved
    /// against the registry; only when the registry cannot be reached (not
    /// when it answers 401 or 404) is the cached tag served, with `warning`
    /// set.
    pub async fn fetch(&self, reference: &str, kind: ArtifactKind) -> Result<Fetched, OciError> {
        let reference = self.checked_reference(reference)?;
        let mut corrupt = None;
        if let Some(digest) = reference.manifest_digest() {
            match self.cached_artifact(&reference, digest, kind).await? {
                Cached::Hit(fetched) => return Ok(fetched),
                Cached::Miss => {}
                Cached::Corrupt(err) => corrupt = Some(err),
            }
        }
        match self.registry_artifact(&reference, kind).await {
            Ok(mut fetched) => {
                if let (Some(err), None) = (&corrupt, &fetched.warning) {
                    fetched.warning = Some(format!("{err}; fetched it again"));
                }
                Ok(fetched)
            }
            Err(err @ OciError::Unreachable { .. }) => match corrupt {
                Some(corrupt) => Err(corrupt),
                None if reference.digest().is_none() => self.offline(&reference, kind, err).await,
                None => Err(err),
            },
            Err(err) => Err(err),
        }
    }

    /// The registry is unreachable: serve the tag as last fetched, if cached.
    async fn offline(
        &self,
        reference: &Reference,
        kind: ArtifactKind,
        unreachable: OciError,
    ) -> Result<Fetched, OciError> {
        let Some(entry) = self.cache.read_tag(reference).await? else {
            return Err(unreachable);
        };
        let Some(manifest_digest) = Digest::parse(&entry.manifest_digest) else {
            return Err(unreachable);
        };
        match self
            .cached_artifact(reference, &manifest_digest, kind)
            .await?
        {
            Cached::Hit(mut fetched) => {
                fetched.warning = Some(format!(
                    "{unreachable}; served {reference} from the cache as manifest {manifest_digest}, which may be out of date"
                ));
                Ok(fetched)
            }
            Cached::Miss => Err(unreachable),
            Cached::Corrupt(err) => Err(err),
        }
    }

    /// The artifact whose manifest has `manifest_digest`, from the cache alone.
    async fn cached_artifact(
        &self,
        reference: &Reference,
        manifest_digest: &Digest,
        kind: ArtifactKind,
    ) -> Result<Cached, OciError> {
        let corrupt = |expected: &Digest, actual: String| {
            Cached::Corrupt(OciError::DigestMismatch {
                reference: reference.to_string(),
                expected: expected.to_string(),
                actual,
                in_cache: true,
            })
        };
        let manifest_bytes = match self
            .cache
            .read_blob(manifest_digest, MAX_MANIFEST_BYTES)
            .await?
        {
            Lookup::Hit(bytes) => bytes,
            Lookup::Miss => return Ok(Cached::Miss),
            Lookup::Corrupt { actual } => return Ok(corrupt(manifest_digest, actual)),
        };
        let manifest = parse_manifest(reference, &manifest_bytes)?;
        let (layer, layer_digest) = self.select_layer(reference, &manifest, kind)?;
        match self
            .cache
            .read_blob(&layer_digest, self.policy.max_layer_bytes)
            .await?
        {
            Lookup::Hit(bytes) => Ok(Cached::Hit(Fetched {
                bytes,
                path: self.cache.blob_path(&layer_digest),
                digest: layer_digest.to_string(),
                manifest_digest: manifest_digest.to_string(),
                media_type: layer.media_type.clone(),
                from_cache: true,
                warning: None,
            })),
            Lookup::Miss => Ok(Cached::Miss),
            Lookup::Corrupt { actual } => Ok(corrupt(&layer_digest, actual)),
        }
    }

    /// Resolves the reference against the registry and fetches the layer
    /// unless the cache has it; records the manifest and the tag.
    async fn registry_artifact(
        &self,
        reference: &Reference,
        kind: ArtifactKind,
    ) -> Result<Fetched, OciError> {
        let name = reference.to_string();
        let client = self.protocol_client(reference)?;
        let oci_ref = reference.to_oci();
        let auth = self.auth_for(reference.registry());
        let (body, served_digest) = match client
            .pull_manifest_raw(
                &oci_ref,
                &auth,
                &[MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE],
            )
            .await
        {
            Ok(answer) => answer,
            Err(err) => return Err(self.explain(reference, err).await),
        };
        if body.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(OciError::BadManifest {
                reference: name,
                reason: format!("its manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let manifest_digest = Digest::of(&body);
        let expected = reference.digest().unwrap_or(&served_digest);
        if manifest_digest.as_str() != expected {
            return Err(OciError::DigestMismatch {
                reference: name,
                expected: expected.to_string(),
                actual: manifest_digest.to_string(),
                in_cache: false,
            });
        }
        let manifest = parse_manifest(reference, &body)?;
        let (layer, layer_digest) = self.select_layer(reference, &manifest, kind)?;

        let (bytes, from_cache, warning) = match self
            .cache
            .read_blob(&layer_digest, self.policy.max_layer_bytes)
            .await?
        {
            Lookup::Hit(bytes) => (bytes, true, None),
            Lookup::Miss => (
                self.download(&client, reference, layer, &layer_digest)
                    .await?,
                false,
                None,
            ),
            Lookup::Corrupt { actual } => {
                let bytes = self
                    .download(&client, reference, layer, &layer_digest)
                    .await?;
                let warning = format!(
                        "the cached copy of {reference} hashed to {actual}, not {layer_digest}; it was removed and fetched again"
                    );
                (bytes, false, Some(warning))
            }
        };
        self.cache.put_blob(&manifest_digest, &body).await?;
        if reference.digest().is_none() {
            let entry = TagEntry {
                reference: name,
                manifest_digest: manifest_digest.to_string(),
                layer_digest: layer_digest.to_string(),
                media_type: layer.media_type.clone(),
            };
            self.cache.write_tag(reference, &entry).await?;
        }
        Ok(Fetched {
            bytes,
            path: self.cache.blob_path(&layer_digest),
            digest: layer_digest.to_string(),
            manifest_digest: manifest_digest.to_string(),
            media_type: layer.media_type.clone(),
            from_cache,
            warning,
        })
    }

    /// Streams a layer into the cache, refusing it as soon as it passes the
    /// cap (or its declared size), and returns the verified bytes.
    async fn download(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        layer: &OciDescriptor,
        digest: &Digest,
    ) -> Result<Vec<u8>, OciError> {
        let limit = self.policy.max_layer_bytes;
        let too_large = || OciError::TooLarge {
            reference: reference.to_string(),
            limit,
        };
        // The manifest's size is checked before this; a registry that sends
        // more than it declared is cut off at the declared size.
        let declared = u64::try_from(layer.size).unwrap_or(0);
        let mut stream = match client.pull_blob_stream(&reference.to_oci(), layer).await {
            Ok(stream) => stream,
            Err(err) => return Err(self.explain(reference, err).await),
        };
        if stream.content_length.is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut writer = self.cache.blob_writer(digest).await?;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(io) => return Err(self.explain(reference, io.into()).await),
            };
            let total = writer.len() + chunk.len() as u64;
            if total > limit {
                return Err(too_large());
            }
            if total > declared {
                return Err(OciError::DigestMismatch {
                    reference: reference.to_string(),
                    expected: digest.to_string(),
                    actual: format!("more than the {declared} bytes the manifest declares"),
                    in_cache: false,
                });
            }
            writer.write(&chunk).await?;
        }
        let path = match writer.finish().await {
            Ok(path) => path,
            Err(FinishError::Mismatch { actual }) => {
                return Err(OciError::DigestMismatch {
                    reference: reference.to_string(),
                    expected: digest.to_string(),
                    actual,
                    in_cache: false,
                })
            }
            Err(FinishError::Cache(err)) => return Err(err),
        };
        // Read back through the verifying path: what is returned is what is cached.
        match self.cache.read_blob(digest, limit).await? {
            Lookup::Hit(bytes) => Ok(bytes),
            Lookup::Miss | Lookup::Corrupt { .. } => Err(OciError::cache(
                path,
                std::io::Error::other("the blob just written is gone or changed"),
            )),
        }
    }

    /// The one layer of an artifact of this kind, with its validated digest.
    fn select_layer<'m>(
        &self,
        reference: &Reference,
        manifest: &'m OciImageManifest,
        kind: ArtifactKind,
    ) -> Result<(&'m OciDescriptor, Digest), OciError> {
        let bad = |reason: String| OciError::BadManifest {
            reference: reference.to_string(),
            reason,
        };
        let [layer] = manifest.layers.as_slice() else {
            return Err(bad(format!(
                "it has {} layers, and an actor or provider archive has exactly one",
                manifest.layers.len()
            )));
        };
        if !kind
            .accepted_layer_media_types()
            .contains(&layer.media_type.as_str())
        {
            return Err(OciError::WrongMediaType {
                reference: reference.to_string(),
                kind,
                found: layer.media_type.clone(),
            });
        }
        let digest = Digest::parse(&layer.digest).ok_or_else(|| {
            bad(format!(
                "its layer digest `{}` is not a sha256 digest",
                layer.digest
            ))
        })?;
        let size = u64::try_from(layer.size)
            .map_err(|_| bad(format!("its layer has a negative size {}", layer.size)))?;
        if size > self.policy.max_layer_bytes {
            return Err(OciError::TooLarge {
                reference: reference.to_string(),
                limit: self.policy.max_layer_bytes,
            });
        }
        Ok((layer, digest))
    }
}

fn parse_manifest(reference: &Reference, body: &[u8]) -> Result<OciImageManifest, OciError> {
    serde_json::from_slice::<OciImageManifest>(body).map_err(|e| OciError::BadManifest {
        reference: reference.to_string(),
        reason: format!(
            "its manifest is not an image manifest ({})",
            error::one_line(&e.to_string())
        ),
    })
}

/// reqwest is built without a default TLS crypto provider (so neither
/// OpenSSL nor aws-lc is compiled); install ring's for the process, once.
/// A provider installed first by someone else is kept.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
