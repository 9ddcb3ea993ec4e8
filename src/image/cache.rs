//! Where built images live and how a build recognises its own output.

use super::ImageError;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// zeroboot's cache root: `$ZEROBOOT_CACHE`, else `$XDG_CACHE_HOME/zeroboot`,
/// else `~/.cache/zeroboot` (the same root `scripts/pyenv` uses for the
/// project's Python environments).
pub fn root() -> Result<PathBuf, ImageError> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(root) = env("ZEROBOOT_CACHE") {
        return Ok(root);
    }
    let base = env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .ok_or(ImageError::NoCacheDir)?;
    Ok(base.join("zeroboot"))
}

/// Where images are built and kept: `<root>/image`.
pub fn default_dir() -> Result<PathBuf, ImageError> {
    Ok(root()?.join("image"))
}

/// An exclusive lock on a cache directory, held for a whole build so that
/// concurrent builds (two CLI runs, parallel tests) never share downloads or
/// staging directories half-made. Released when dropped.
pub struct Lock {
    _file: File,
}

/// Waits for and takes the lock of `dir` (created if missing).
pub fn lock(dir: &Path) -> Result<Lock, ImageError> {
    std::fs::create_dir_all(dir).map_err(ImageError::io("cannot create", dir))?;
    let path = dir.join(".lock");
    let file = File::create(&path).map_err(ImageError::io("cannot create", &path))?;
    // SAFETY: flock on a descriptor we own for the call's duration.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(ImageError::io("cannot lock", path)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(Lock { _file: file })
}

/// FNV-1a: a stable 64-bit digest of a build's inputs (not a security
/// boundary: it only names cache entries).
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    /// The empty digest (FNV's offset basis).
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    /// Mixes in `bytes` and a separator, so ("ab","c") and ("a","bc") differ.
    pub fn mix(mut self, bytes: &[u8]) -> Self {
        for &b in bytes.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// Sixteen hex digits.
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_separates_fields() {
        assert_eq!(
            Fingerprint::default().mix(b"").hex(),
            Fingerprint::default().mix(b"").hex()
        );
        let ab_c = Fingerprint::default().mix(b"ab").mix(b"c").hex();
        let a_bc = Fingerprint::default().mix(b"a").mix(b"bc").hex();
        assert_ne!(ab_c, a_bc);
        assert_eq!(ab_c.len(), 16);
    }
}
