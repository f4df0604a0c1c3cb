//! Provider binaries as the launcher runs them: each one read once, copied
//! into a sealed memfd, hashed *after* sealing, and kept by hash. A provider
//! is exec'd from that memfd (`execveat(fd, "", AT_EMPTY_PATH)`), so what
//! runs is exactly the bytes whose hash matched the archive's claims, and
//! nothing on disk (a replaced cache file, a second writer of it) can change
//! what a restart runs.
//!
//! The hash is taken of the sealed memfd, not of the file as it was read:
//! once `F_SEAL_WRITE` is set nobody, not even a process that opened
//! `/proc/<launcher>/fd/N`, can change the bytes, so the hash and the exec
//! see the same ones.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// How many binaries the cache keeps. Beyond it the least recently used one
/// that no live provider runs is dropped (a later launch of it reads and
/// hashes the file again).
pub const CACHE_CAPACITY: usize = 64;

/// A verified provider binary in a sealed memfd.
#[derive(Debug)]
pub(crate) struct Image {
    /// Close-on-exec, sealed against writing, growing and shrinking.
    pub fd: OwnedFd,
    /// Upper-case hex SHA-256 of the memfd's contents.
    pub sha256: String,
    /// A `#!` script: its interpreter opens `/dev/fd/N`, so the child keeps
    /// the memfd open across the exec (the kernel refuses a close-on-exec
    /// one for scripts).
    pub script: bool,
}

/// The images of this launcher, by hash.
#[derive(Debug, Default)]
pub(crate) struct Images {
    by_hash: HashMap<String, (Arc<Image>, u64)>,
    clock: u64,
}

pub(crate) type SharedImages = Arc<Mutex<Images>>;

impl Images {
    /// The image with this hash, if it is cached (and marks it used).
    pub(crate) fn get(&mut self, sha256: &str) -> Option<Arc<Image>> {
        self.clock += 1;
        let clock = self.clock;
        self.by_hash.get_mut(sha256).map(|(image, used)| {
            *used = clock;
            image.clone()
        })
    }

    /// Caches `image` (or returns the one a concurrent load cached first),
    /// then evicts down to [`CACHE_CAPACITY`] what no live provider holds.
    pub(crate) fn insert(&mut self, image: Image) -> Arc<Image> {
        self.clock += 1;
        let clock = self.clock;
        let kept = self
            .by_hash
            .entry(image.sha256.clone())
            .or_insert_with(|| (Arc::new(image), clock));
        kept.1 = clock;
        let kept = kept.0.clone();
        while self.by_hash.len() > CACHE_CAPACITY {
            // Held only here (and by `kept` for the new one): not running.
            let victim = self
                .by_hash
                .iter()
                .filter(|(_, (image, _))| Arc::strong_count(image) == 1)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(hash, _)| hash.clone());
            match victim {
                Some(hash) => {
                    self.by_hash.remove(&hash);
                }
                None => break,
            }
        }
        kept
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_hash.len()
    }
}

fn errno_text(e: &std::io::Error) -> String {
    // "No such file or directory", as the exec error of old read.
    match e.raw_os_error() {
        Some(errno) => nix::errno::Errno::from_raw(errno).desc().to_owned(),
        None => e.to_string(),
    }
}

/// Checks that `sha256` is 64 hex digits; returns it upper-cased.
pub(crate) fn normalise_hash(sha256: &str) -> Result<String, String> {
    if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha256.to_ascii_uppercase())
    } else {
        Err(format!(
            "the launch names no valid SHA-256 for its binary (got {sha256:?})"
        ))
    }
}

fn memfd(path: &str) -> std::io::Result<OwnedFd> {
    // The name is cosmetic, but the kernel makes `memfd:NAME` the process's
    // `comm` (what `ps -e` and `top` show, 15 bytes) and `/proc/PID/exe`
    // shows `/memfd:NAME`: the binary's file name, the provider's name, says
    // most in both (argv[0], the whole path, is what `ps -ef` shows).
    let file_name = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "provider".into());
    let short: String = file_name.chars().filter(|&c| c != '\0').take(200).collect();
    let cname = CString::new(short).unwrap_or_else(|_| c"provider".to_owned());
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3) says outright that this memfd is meant to be
    // executed, which `vm.memfd_noexec` would otherwise refuse; older kernels
    // do not know the flag (EINVAL) and make every memfd executable.
    // SAFETY: `cname` is a NUL-terminated string alive for the call.
    let mut fd = unsafe { libc::memfd_create(cname.as_ptr(), flags | libc::MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How often sealing is tried while the kernel reports the pages busy.
const SEAL_ATTEMPTS: u32 = 20;

/// Seals `copy` against every change. `F_SEAL_WRITE` fails with `EBUSY`
/// while a page just written still has a reference held elsewhere (the
/// kernel's per-CPU page batches of another CPU, drained soon after); that
/// passes, so it is tried again, briefly.
fn seal(copy: &File) -> std::io::Result<()> {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    let mut attempt = 1;
    loop {
        // SAFETY: F_ADD_SEALS takes an integer; the descriptor is ours.
        if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) || attempt == SEAL_ATTEMPTS {
            return Err(err);
        }
        attempt += 1;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Reads the binary at `path` into a sealed memfd and checks its hash
/// against `expected` (upper-case hex). Errors are one line for the host.
pub(crate) fn load(path: &str, expected: &str) -> Result<Image, String> {
    let cannot = |e: std::io::Error| format!("cannot exec {path}: {}", errno_text(&e));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    // What execve of the path would refuse, the launch refuses too: the
    // memfd itself is always executable.
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return Err(cannot(std::io::Error::from_raw_os_error(libc::EACCES)));
    }
    let fd = memfd(path).map_err(|e| format!("cannot copy {path} into memory: {e}"))?;
    let mut copy = File::from(fd);
    std::io::copy(&mut file, &mut copy).map_err(|e| format!("cannot read {path}: {e}"))?;
    drop(file);
    seal(&copy).map_err(|e| format!("cannot seal the in-memory copy of {path}: {e}"))?;
    // Hash what is sealed: these bytes can no longer change.
    copy.rewind()
        .map_err(|e| format!("cannot read back {path}: {e}"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = [0u8; 2];
    let mut seen = 0usize;
    loop {
        let n = copy
            .read(&mut buf)
            .map_err(|e| format!("cannot read back {path}: {e}"))?;
        if n == 0 {
            break;
        }
        if seen < 2 {
            let take = (2 - seen).min(n);
            head[seen..seen + take].copy_from_slice(&buf[..take]);
        }
        seen += n;
        hasher.update(&buf[..n]);
    }
    let actual = hex::encode_upper(hasher.finalize());
    if actual != expected {
        return Err(format!(
            "refused to run {path}: its SHA-256 {actual} does not match the verified {expected} (the file changed after it was verified)"
        ));
    }
    Ok(Image {
        fd: copy.into(),
        sha256: actual,
        script: seen >= 2 && head == *b"#!",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: usize) -> Image {
        Image {
            fd: memfd("t").unwrap(),
            sha256: format!("{n:064X}"),
            script: false,
        }
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_image_nobody_runs() {
        let mut images = Images::default();
        let running = images.insert(image(0));
        for n in 1..CACHE_CAPACITY {
            images.insert(image(n));
        }
        assert!(images.get(&format!("{:064X}", 1)).is_some());
        images.insert(image(CACHE_CAPACITY));
        assert_eq!(images.len(), CACHE_CAPACITY);
        // 0 is the oldest but runs; 1 was used again; 2 goes.
        assert!(images.get(&format!("{:064X}", 0)).is_some());
        assert!(images.get(&format!("{:064X}", 1)).is_some());
        assert!(images.get(&format!("{:064X}", 2)).is_none());
        drop(running);
    }

    #[test]
    fn a_sealed_copy_cannot_be_written() {
        let dir = std::env::temp_dir().join(format!("plt-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bin");
        std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = path.to_str().unwrap();
        let hash = hex::encode_upper(Sha256::digest(b"#!/bin/sh\necho hi\n"));
        let img = load(path, &hash).unwrap();
        assert!(img.script);
        let mut f = File::from(img.fd.try_clone().unwrap());
        assert!(std::io::Write::write_all(&mut f, b"x").is_err());
        let err = load(path, &format!("{:064X}", 7)).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
