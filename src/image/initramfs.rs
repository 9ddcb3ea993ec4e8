//! Packing the initramfs: the agent as `/init`, the directories and the
//! console node the kernel and agent expect, and a staged tree (Python).

use super::ImageError;
use super::cpio::{CpioWriter, ROOT};
use super::layers::Owners;
use std::fs::{self, File};
use std::io::BufWriter;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Directories the agent mounts on or works in.
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("root", 0o700),
];

/// Adds `dir`'s contents under archive path `prefix`, sorted (reproducible),
/// with the owners `owners` records (relative to the tree's root).
fn add_tree(
    w: &mut CpioWriter<BufWriter<File>>,
    dir: &Path,
    prefix: &str,
    owners: &Owners,
) -> Result<(), ImageError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(ImageError::io("cannot list", dir))?
        .collect::<Result<_, _>>()
        .map_err(ImageError::io("cannot list", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if name == "init" {
            continue; // the agent is /init, whatever the tree holds
        }
        let owner = owners.get(Path::new(&name)).copied().unwrap_or(ROOT);
        let meta = fs::symlink_metadata(&path).map_err(ImageError::io("cannot stat", &path))?;
        let perm = meta.permissions().mode() & 0o7777;
        let write = |e| ImageError::Io {
            action: "cannot pack",
            path: path.clone(),
            source: e,
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(ImageError::io("cannot read link", &path))?;
            w.symlink(&name, &target.to_string_lossy(), owner)
                .map_err(write)?;
        } else if meta.is_dir() {
            w.dir(&name, perm, owner).map_err(write)?;
            add_tree(w, &path, &format!("{name}/"), owners)?;
        } else if meta.is_file() {
            let data = fs::read(&path).map_err(ImageError::io("cannot read", &path))?;
            w.file(&name, perm, &data, owner).map_err(write)?;
        }
    }
    Ok(())
}

/// Writes the initramfs to `out` (through a temporary file, so a cached
/// image is never half written).
pub fn write(agent: &Path, tree: &Path, owners: &Owners, out: &Path) -> Result<(), ImageError> {
    let tmp = out.with_extension("partial");
    let file = File::create(&tmp).map_err(ImageError::io("cannot create", &tmp))?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    let io = |e| ImageError::Io {
        action: "cannot write",
        path: tmp.clone(),
        source: e,
    };
    for (dir, perm) in DIRS {
        w.dir(dir, *perm, ROOT).map_err(io)?;
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs exists.
    w.char_dev("dev/console", 0o600, 5, 1).map_err(io)?;
    let agent_bytes = fs::read(agent).map_err(ImageError::io("cannot read", agent))?;
    w.file("init", 0o755, &agent_bytes, ROOT).map_err(io)?;
    add_tree(&mut w, tree, "", owners)?;
    w.finish().map_err(io)?;
    fs::rename(&tmp, out).map_err(ImageError::io("cannot move the image to", out))
}
