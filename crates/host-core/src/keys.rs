//! Signing keys kept on disk, as `wash` does: created on first use in a key
//! directory (owner-only), or read from a file the user names.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use nkeys::KeyPair;

/// The kinds of key `keys gen` makes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyKind {
    Account,
    Module,
    Service,
    Server,
    /// Signs invocations between the hosts of a lattice.
    Cluster,
}

pub fn generate(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::Account => KeyPair::new_account(),
        KeyKind::Module => KeyPair::new_module(),
        KeyKind::Service => KeyPair::new_service(),
        KeyKind::Server => KeyPair::new_server(),
        KeyKind::Cluster => KeyPair::new_cluster(),
    }
}

/// `$WASMHOST_KEYS_DIR`, else `~/.wasmhost/keys`.
pub fn default_key_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WASMHOST_KEYS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home = dirs::home_dir().context("cannot find the home directory; set WASMHOST_KEYS_DIR")?;
    Ok(home.join(".wasmhost").join("keys"))
}

/// Reads a seed from `path`: the file holds the seed (`S...`) alone.
pub fn read_seed_file(path: &Path) -> Result<KeyPair> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    KeyPair::from_seed(text.trim())
        .with_context(|| format!("{} does not hold an nkey seed", path.display()))
}

/// The issuer (an account) and subject (of `subject_kind`) that sign an
/// actor or an archive: from the files the user named, or else kept in the
/// key directory (`default` account, one subject key per `name`).
pub fn signing_pair(
    keys_dir: Option<PathBuf>,
    issuer: Option<&Path>,
    subject: Option<&Path>,
    name: &str,
    subject_kind: KeyKind,
) -> Result<(KeyPair, KeyPair)> {
    let dir = match keys_dir {
        Some(dir) => dir,
        None => default_key_dir()?,
    };
    let issuer = match issuer {
        Some(path) => read_seed_file(path)?,
        None => load_or_create(&dir, "default", KeyKind::Account)?,
    };
    let subject = match subject {
        Some(path) => read_seed_file(path)?,
        None => load_or_create(&dir, name, subject_kind)?,
    };
    if !issuer.public_key().starts_with('A') {
        bail!("the issuer key must be an account key (starting with A)");
    }
    let prefix = prefix_of(subject_kind);
    if !subject.public_key().starts_with(prefix) {
        bail!("the subject key must be a {subject_kind:?} key (starting with {prefix})");
    }
    Ok((issuer, subject))
}

fn prefix_of(kind: KeyKind) -> char {
    match kind {
        KeyKind::Account => 'A',
        KeyKind::Module => 'M',
        KeyKind::Service => 'V',
        KeyKind::Server => 'N',
        KeyKind::Cluster => 'C',
    }
}

/// The key named `name` in the key directory, created on first use.
pub fn load_or_create(dir: &Path, name: &str, kind: KeyKind) -> Result<KeyPair> {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let suffix = match kind {
        KeyKind::Account => "account",
        KeyKind::Module => "module",
        KeyKind::Service => "service",
        KeyKind::Server => "server",
        KeyKind::Cluster => "cluster",
    };
    let path = dir.join(format!("{safe}_{suffix}.nk"));
    if path.exists() {
        let key = read_seed_file(&path)?;
        let expected = prefix_of(kind);
        if !key.public_key().starts_with(expected) {
            bail!(
                "{} holds a key of the wrong kind (expected one starting with {expected})",
                path.display()
            );
        }
        return Ok(key);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create key directory {}", dir.display()))?;
    let key = generate(kind);
    let seed = key.seed().context("a new key has no seed")?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create key file {}", path.display()))?;
    file.write_all(seed.as_bytes())?;
    eprintln!("created {} key {}", suffix, path.display());
    Ok(key)
}
