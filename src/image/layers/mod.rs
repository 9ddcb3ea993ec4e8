//! Applying a tar stream (an OCI/Docker image layer, or the outer tar of a
//! `docker save`) to a staging root, as a container runtime would, without
//! ever writing outside it:
//!
//! - entry names are relative to the root; a name with `..` is refused
//!   ([`LayerError::Escape`]), a leading `/` or `./` is dropped;
//! - the directory an entry goes into is resolved inside the root
//!   ([`super::scoped`]): a symlink in a lower layer (`/lib -> usr/lib`)
//!   is followed, but an absolute target means the root's `/`, so a layer
//!   that plants `etc -> /` and then writes `etc/passwd` writes the root's
//!   own `etc/passwd`;
//! - the entry itself is never followed: an existing file, link or
//!   directory of that name is replaced;
//! - whiteouts: `.wh.NAME` removes NAME from the layers below,
//!   `.wh..wh..opq` empties its directory of what the layers below put
//!   there (entries of the same layer stay);
//! - hard links must name an entry already inside the root;
//! - regular files, directories, symlinks and hard links keep their mode
//!   bits; owners are recorded in [`Owners`] (the initramfs carries them;
//!   the build need not run as root); device nodes and FIFOs are skipped
//!   (the guest's devtmpfs provides devices);
//! - at most [`MAX_ENTRIES`] entries and [`MAX_BYTES`] bytes per image.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::scoped;

/// Most entries all the layers of one image may hold.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Most bytes of file data all the layers of one image may hold.
pub const MAX_BYTES: u64 = 8 << 30;

/// Owner (uid, gid) of every staged path that is not root's, relative to
/// the root.
pub type Owners = BTreeMap<PathBuf, (u32, u32)>;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// An entry's name leaves the root.
    #[error("entry {0:?} escapes the root")]
    Escape(String),
    /// A hard link names nothing inside the root.
    #[error("hard link {name:?} -> {target:?}: the target is not in the image")]
    BadLink {
        /// The link.
        name: String,
        /// What it names.
        target: String,
    },
    /// The archive is not a tar, or is cut short.
    #[error("not a readable tar archive: {0}")]
    Tar(String),
    /// The image is larger than the builder accepts.
    #[error("more than {what} in the image's layers")]
    TooLarge {
        /// Which limit.
        what: &'static str,
    },
    /// A filesystem operation in the staging root failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LayerError {
    let path = path.to_owned();
    move |source| LayerError::Io {
        action,
        path,
        source,
    }
}

/// Running totals across the layers of one image.
#[derive(Debug, Default)]
pub struct Budget {
    entries: u64,
    bytes: u64,
}

/// An entry name as a relative path of plain names, or `None` for the root
/// itself; `..` anywhere is an escape.
fn relative(name: &str) -> Result<Option<PathBuf>, LayerError> {
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(LayerError::Escape(name.to_owned()));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Removes whatever is at `path` (a file, link or whole directory), without
/// following it.
fn remove(path: &Path) -> Result<(), LayerError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io("cannot remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io("cannot remove", path)),
        Err(_) => Ok(()),
    }
}

/// Applies one tar stream to `root`. `whiteouts`: interpret `.wh.` entries
/// (image layers) rather than writing them (an outer archive).
pub fn apply(
    root: &Path,
    input: impl Read,
    whiteouts: bool,
    owners: &mut Owners,
    budget: &mut Budget,
) -> Result<(), LayerError> {
    let tar_err = |e: std::io::Error| LayerError::Tar(e.to_string());
    let mut archive = tar::Archive::new(input);
    // Paths this layer wrote: an opaque whiteout keeps them.
    let mut ours: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        budget.entries += 1;
        if budget.entries > MAX_ENTRIES {
            return Err(LayerError::TooLarge {
                what: "1,000,000 entries",
            });
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = relative(&name)? else {
            continue; // the root directory itself
        };
        let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned());
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = scoped::resolve(root, parent_rel, true).map_err(|e| LayerError::Io {
            action: "cannot resolve",
            path: parent_rel.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let file_name = file_name.unwrap_or_default();
        if whiteouts {
            if file_name == ".wh..wh..opq" {
                opaque(&parent, root, &ours)?;
                continue;
            }
            if let Some(hidden) = file_name.strip_prefix(".wh.") {
                if relative(hidden)?.is_some() && !hidden.contains('/') {
                    remove(&parent.join(hidden))?;
                }
                continue;
            }
        }
        fs::create_dir_all(&parent).map_err(io("cannot create", &parent))?;
        let dest = parent.join(&file_name);
        let header = entry.header();
        let mode = header.mode().map_err(tar_err)? & 0o7777;
        // Some writers leave the owner fields empty: root, then.
        let owner = (
            header.uid().unwrap_or(0) as u32,
            header.gid().unwrap_or(0) as u32,
        );
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                if !fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
                    remove(&dest)?;
                    fs::create_dir(&dest).map_err(io("cannot create", &dest))?;
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(io("cannot chmod", &dest))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                budget.bytes += size;
                if budget.bytes > MAX_BYTES {
                    return Err(LayerError::TooLarge {
                        what: "8 GiB of files",
                    });
                }
                remove(&dest)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(io("cannot create", &dest))?;
                std::io::copy(&mut (&mut entry).take(size), &mut out).map_err(tar_err)?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(io("cannot chmod", &dest))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(tar_err)?
                    .ok_or_else(|| LayerError::Tar(format!("symlink {name:?} has no target")))?
                    .into_owned();
                remove(&dest)?;
                std::os::unix::fs::symlink(&target, &dest).map_err(io("cannot link", &dest))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(tar_err)?
                    .ok_or_else(|| LayerError::Tar(format!("hard link {name:?} has no target")))?;
                let target_name = target.to_string_lossy().into_owned();
                let bad = || LayerError::BadLink {
                    name: name.clone(),
                    target: target_name.clone(),
                };
                let target_rel = relative(&target_name)?.ok_or_else(bad)?;
                // The link names the entry itself, not where a symlink leads.
                let source = scoped::resolve(root, &target_rel, false).map_err(|_| bad())?;
                if !fs::symlink_metadata(&source).is_ok_and(|m| !m.is_dir()) {
                    return Err(bad());
                }
                if source != dest {
                    remove(&dest)?;
                    fs::hard_link(&source, &dest).map_err(io("cannot link", &dest))?;
                }
            }
            // Devices, FIFOs, and PAX/GNU metadata entries the tar crate
            // has already folded into the next entry.
            _ => continue,
        }
        let staged = dest.strip_prefix(root).unwrap_or(&dest).to_owned();
        if owner == (0, 0) {
            owners.remove(&staged);
        } else {
            owners.insert(staged.clone(), owner);
        }
        ours.insert(staged);
    }
    Ok(())
}

/// An opaque whiteout: empties `dir` of what lower layers put there.
fn opaque(dir: &Path, root: &Path, ours: &HashSet<PathBuf>) -> Result<(), LayerError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry.map_err(io("cannot list", dir))?.path();
        let staged = path.strip_prefix(root).unwrap_or(&path);
        if !ours.contains(staged) {
            remove(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
