//! The guest's Python 3.11, staged from Debian's packages into a directory
//! tree that becomes the initramfs: the interpreter, the chosen part of the
//! standard library precompiled, and the shared libraries it loads.
//!
//! Debian's packages ship no `.pyc`. Without them every fork would compile
//! what it imports (and could not even cache the result), so the staged
//! interpreter compiles the tree here: `unchecked-hash` pycs, which the
//! importer trusts without looking at the source's timestamp. The minimal
//! profile goes further and ships only the legacy-located `.pyc` files
//! (no sources: smaller, nothing to check at all).

use super::apt::Apt;
use super::{ImageError, Profile, command, libs};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Interpreter and the "minimal" half of the standard library.
const CORE_PACKAGES: [&str; 2] = ["python3.11-minimal", "libpython3.11-minimal"];
/// The rest of the standard library (and its extension modules).
const STDLIB_PACKAGE: &str = "libpython3.11-stdlib";
/// Modules the minimal profile takes from the full standard library.
const MINIMAL_EXTRAS: &[&str] = &["json"];
/// Extension modules the minimal profile leaves out: they pull in OpenSSL
/// (about 5 MB) and pure-Python fallbacks cover `hashlib`.
const MINIMAL_DROPPED: &[&str] = &[
    "_ssl.cpython-311-x86_64-linux-gnu.so",
    "_hashlib.cpython-311-x86_64-linux-gnu.so",
];
/// Parts of the standard library no sandbox needs, in every profile.
const NEVER: &[&str] = &[
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3/tests",
];

const LIB: &str = "usr/lib/python3.11";
const BIN: &str = "usr/bin/python3.11";

/// The `.deb` files a build uses, downloaded if needed.
pub fn fetch(apt: &Apt) -> Result<Vec<PathBuf>, ImageError> {
    CORE_PACKAGES
        .iter()
        .chain([&STDLIB_PACKAGE])
        .map(|p| apt.fetch(p))
        .collect()
}

fn remove(path: &Path) -> Result<(), ImageError> {
    let result = if path.is_dir() && !path.is_symlink() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(ImageError::io("cannot remove", path))
}

/// Keeps only `keep` (relative paths) directly under `dir`.
fn keep_only(dir: &Path, keep: &[&str]) -> Result<(), ImageError> {
    for entry in fs::read_dir(dir).map_err(ImageError::io("cannot list", dir))? {
        let entry = entry.map_err(ImageError::io("cannot list", dir))?;
        if !keep.iter().any(|k| entry.file_name() == *k) {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes symlinks whose target lies outside the staged tree (Debian points
/// `sitecustomize.py` into `/etc`).
fn drop_dangling_links(dir: &Path) -> Result<(), ImageError> {
    for entry in fs::read_dir(dir).map_err(ImageError::io("cannot list", dir))? {
        let path = entry.map_err(ImageError::io("cannot list", dir))?.path();
        if path.is_symlink() {
            let target = fs::read_link(&path).map_err(ImageError::io("cannot read link", &path))?;
            if target.is_absolute() || !path.exists() {
                remove(&path)?;
            }
        } else if path.is_dir() {
            drop_dangling_links(&path)?;
        }
    }
    Ok(())
}

/// Extracts the packages into `work/root` and trims them to `profile`.
fn unpack(debs: &[PathBuf], profile: Profile, work: &Path) -> Result<PathBuf, ImageError> {
    let root = work.join("root");
    let (core, stdlib) = debs.split_at(CORE_PACKAGES.len());
    for deb in core {
        Apt::extract(deb, &root)?;
    }
    match profile {
        Profile::Full => Apt::extract(&stdlib[0], &root)?,
        Profile::Minimal => {
            let full = work.join("stdlib");
            Apt::extract(&stdlib[0], &full)?;
            for module in MINIMAL_EXTRAS {
                let from = full.join(LIB).join(module);
                let to = root.join(LIB).join(module);
                fs::rename(&from, &to).map_err(ImageError::io("cannot move", &from))?;
            }
            for module in MINIMAL_DROPPED {
                let so = root.join(LIB).join("lib-dynload").join(module);
                if so.exists() {
                    remove(&so)?;
                }
            }
        }
    }
    keep_only(&root, &["usr"])?;
    keep_only(&root.join("usr"), &["bin", "lib"])?;
    keep_only(&root.join("usr/bin"), &["python3.11"])?;
    keep_only(&root.join("usr/lib"), &["python3.11"])?;
    for part in NEVER {
        let path = root.join(LIB).join(part);
        if path.exists() {
            remove(&path)?;
        }
    }
    for entry in fs::read_dir(root.join(LIB).join("lib-dynload"))
        .map_err(ImageError::io("cannot list", &root))?
    {
        let path = entry.map_err(ImageError::io("cannot list", &root))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("_test")
            || name.starts_with("xx")
            || name.starts_with("_xx")
            || name.starts_with("_ctypes_test")
        {
            remove(&path)?;
        }
    }
    drop_dangling_links(&root)?;
    std::os::unix::fs::symlink("python3.11", root.join("usr/bin/python3"))
        .map_err(ImageError::io("cannot link", root.join("usr/bin/python3")))?;
    Ok(root)
}

/// Compiles the staged standard library with the staged interpreter (same
/// version, same magic number), recording guest paths in the code objects.
fn compile(root: &Path, profile: Profile) -> Result<(), ImageError> {
    let mut cmd = Command::new(root.join(BIN));
    cmd.args([
        "-I",
        "-m",
        "compileall",
        "-q",
        "--invalidation-mode",
        "unchecked-hash",
        "-s",
    ])
    .arg(root)
    .args(["-p", "/"]);
    if profile == Profile::Minimal {
        cmd.arg("-b");
    }
    command::run(cmd.arg(root.join(LIB)))?;
    if profile == Profile::Minimal {
        remove_sources(&root.join(LIB))?;
    }
    Ok(())
}

/// Deletes every `.py` that has a `.pyc` beside it.
fn remove_sources(dir: &Path) -> Result<(), ImageError> {
    for entry in fs::read_dir(dir).map_err(ImageError::io("cannot list", dir))? {
        let path = entry.map_err(ImageError::io("cannot list", dir))?.path();
        if path.is_dir() && !path.is_symlink() {
            remove_sources(&path)?;
        } else if path.extension().is_some_and(|e| e == "py") && path.with_extension("pyc").exists()
        {
            remove(&path)?;
        }
    }
    Ok(())
}

/// Every ELF file of the staged Python: the interpreter and its extension modules.
fn elf_files(root: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let dynload = root.join(LIB).join("lib-dynload");
    let mut files = vec![root.join(BIN)];
    for entry in fs::read_dir(&dynload).map_err(ImageError::io("cannot list", &dynload))? {
        let path = entry
            .map_err(ImageError::io("cannot list", &dynload))?
            .path();
        if path.extension().is_some_and(|e| e == "so") {
            files.push(path);
        }
    }
    Ok(files)
}

/// Stages Python for `profile` under `work` (emptied first); returns the
/// tree's root, to be packed into the initramfs as `/`.
pub fn stage(debs: &[PathBuf], profile: Profile, work: &Path) -> Result<PathBuf, ImageError> {
    if work.exists() {
        remove(work)?;
    }
    eprintln!("zeroboot image: staging Python ({profile:?} profile)");
    let root = unpack(debs, profile, work)?;
    eprintln!("zeroboot image: precompiling the standard library");
    compile(&root, profile)?;
    let libs = libs::closure(&elf_files(&root)?)?;
    libs::install(&libs, &root)?;
    Ok(root)
}
