//! `host-core push` and `host-core pull`: publishing what `claims sign` and
//! `par create` made, as `wash push` and `wash pull` do, with wasmCloud's
//! media types. Also the run command's registry client.

use std::{collections::HashMap, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use oci::{ArtifactKind, Credentials, OciError, Policy};

use host_core::{
    par,
    paths::{self, StatePaths},
};

use super::args::{OciArgs, PullArgs, PushArgs, RegistryArgs};

/// The largest artifact `push` reads: an archive's limit.
const MAX_PUSH_LEN: u64 = par::MAX_UNPACKED_LEN;

/// The run command's registry client: its policy and the credentials of
/// `--oci-registry`.
pub(crate) fn host_client(args: &OciArgs, state: &StatePaths) -> Result<oci::Client> {
    let policy = Policy {
        allow_latest: args.oci_allow_latest,
        allowed_insecure: args.oci_allowed_insecure.clone(),
        ..Policy::default()
    };
    let credentials = match (&args.oci_registry, &args.oci_user) {
        (Some(registry), Some(username)) => basic(registry, username, &args.oci_password),
        _ => HashMap::new(),
    };
    Ok(oci::Client::new(state.oci_cache(), policy, credentials)?)
}

/// Basic-auth credentials for one registry.
fn basic(
    registry: &str,
    username: &str,
    password: &Option<String>,
) -> HashMap<String, Credentials> {
    HashMap::from([(
        registry.to_owned(),
        Credentials::Basic {
            username: username.to_owned(),
            password: password.clone().unwrap_or_default(),
        },
    )])
}

/// A client for one push or pull: plain HTTP to the reference's registry
/// only with `--insecure`.
fn cli_client(args: &RegistryArgs, reference: &str) -> Result<oci::Client> {
    let parsed = oci::parse(reference)?;
    let state = paths::state_dir(args.state_dir.clone())?;
    paths::ensure_private_dir(&state)?;
    let paths = StatePaths::new(state.clone(), state);
    let policy = Policy {
        allow_latest: args.allow_latest,
        allowed_insecure: if args.insecure {
            vec![parsed.registry().to_owned()]
        } else {
            Vec::new()
        },
        ..Policy::default()
    };
    let credentials = match &args.user {
        Some(username) => basic(parsed.registry(), username, &args.password),
        None => HashMap::new(),
    };
    Ok(oci::Client::new(paths.oci_cache(), policy, credentials)?)
}

/// What a file is, by its content: wasm starts with `\0asm`; anything else
/// must read as a provider archive.
fn kind_of(path: &Path, bytes: &[u8]) -> Result<ArtifactKind> {
    if bytes.starts_with(b"\0asm") {
        return Ok(ArtifactKind::Actor);
    }
    match par::read(bytes) {
        Ok(_) => Ok(ArtifactKind::Provider),
        Err(e) => bail!(
            "{} is neither a wasm actor nor a provider archive ({e})",
            path.display()
        ),
    }
}

pub(crate) async fn push(args: PushArgs) -> Result<()> {
    // The error's text has its cause already: no chain.
    let bytes = par::read_regular_file(&args.file, MAX_PUSH_LEN)
        .map_err(|e| anyhow!("cannot read {}: {e}", args.file.display()))?;
    let kind = kind_of(&args.file, &bytes)?;
    let client = cli_client(&args.registry, &args.reference)?;
    let digest = client.push(&args.reference, kind, bytes).await?;
    println!("Pushed {} ({kind}): {digest}", args.reference);
    Ok(())
}

pub(crate) async fn pull(args: PullArgs) -> Result<()> {
    let client = cli_client(&args.registry, &args.reference)?;
    let fetched = match client.fetch(&args.reference, ArtifactKind::Actor).await {
        Err(OciError::WrongMediaType { .. }) => {
            client
                .fetch(&args.reference, ArtifactKind::Provider)
                .await?
        }
        other => other?,
    };
    if let Some(warning) = &fetched.warning {
        eprintln!("warning: {warning}");
    }
    std::fs::write(&args.output, &fetched.bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "Pulled {} ({}) to {}",
        args.reference,
        fetched.manifest_digest,
        args.output.display()
    );
    Ok(())
}
