//! The guest's Python 3.11, staged from Debian's packages into a directory
//! tree that becomes the initramfs: the interpreter, the chosen part of the
//! standard library precompiled, and the shared libraries it loads.
//!
//! Debian's packages ship no `.pyc`. Without them every fork would compile
//! what it imports (and could not even cache the result), so the staged
//! interpreter compiles the tree here: `unchecked-hash` pycs, which the
//! importer trusts without looking at the source's timestamp.
//!
//! The minimal profile is cut to size by a rule rather than a list of
//! files: it carries the standard library modules that the staged
//! interpreter has loaded once it has started and imported
//! [`minimal_modules`] (the zygote's preload list and [`MINIMAL_KEEP`]), as
//! `stdlib.py` computes them. They go into `/usr/lib/python311.zip`, which
//! is on Python's default `sys.path`, as sourceless `.pyc` compiled with
//! `optimize=2`. Measured (Debian's 3.11.2-6+deb12u9): those 143 modules
//! are 4.26 MB as plain `.pyc` files, 3.55 MB without docstrings and
//! asserts, 1.42 MB zipped (1.68 MB zipped with docstrings). The costs:
//! - the standard library's docstrings are `None` and its asserts are off,
//!   whatever `-O` level the interpreter runs at (sourceless `.pyc` load at
//!   every level); `help()` needs pydoc, which the profile lacks anyway;
//! - every module is inflated when imported. Medians of 40 runs on the
//!   development host: importing the zygote's preload list takes 25.3 ms
//!   instead of 13.8 ms from plain files; `python3 -c pass` 12.7 ms instead
//!   of 12.0 ms (the zip's directory is read once per interpreter). The
//!   zygote pays this once, before the snapshot; forks find the preloaded
//!   modules already imported, and pay only for the others they import
//!   (`typing`, 121 KB of `.pyc`, inflates in 0.8 ms there).
//!
//! After packing, the build imports the same modules again in the staged
//! tree (`stdlib.py check`), and fails if one is missing: a module trimmed
//! away by mistake stops the build, not a user's program.

use super::cache::Fingerprint;
use super::debian::Debian;
use super::{ImageError, Profile, command, libs};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The interpreter, the "minimal" half of the standard library, the rest of
/// it (and its extension modules).
pub const PACKAGES: [&str; 3] = [
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
];
/// What the minimal profile carries besides the interpreter's startup
/// modules and the zygote's preload list ([`zeroboot_proto::PYTHON_PRELOAD`]):
/// the light, commonly used part of the standard library. Whatever these
/// import when imported comes along; nothing else does, so a module that one
/// of them imports only later, inside a function, must be listed itself
/// (`_strptime`). Left out, for the full profile:
/// email, http, unittest, sqlite3, ssl, xml, logging.handlers, zipfile and
/// tarfile, the CJK and most single-byte codecs, `help()` (pydoc).
const MINIMAL_KEEP: &[&str] = &[
    // Text.
    "textwrap",
    "difflib",
    "csv",
    "pprint",
    "html",
    "shlex",
    "_strptime", // imported lazily by datetime.strptime
    // Numbers.
    "decimal",
    "fractions",
    "statistics",
    "heapq",
    "bisect",
    // The language.
    "typing",
    "dataclasses",
    "enum",
    "copy",
    "contextlib",
    // Files, processes, programs.
    "pathlib",
    "glob",
    "fnmatch",
    "shutil",
    "tempfile",
    "subprocess",
    "signal",
    "argparse",
    "logging",
    // Concurrency.
    "threading",
    "queue",
    "asyncio",
    // Data.
    "pickle",
    "hmac",
    "secrets",
    "uuid",
    "gzip",
    "urllib.parse",
    // Codecs looked up by name (utf-8 is always there).
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.cp1252",
    "encodings.utf_8_sig",
    "encodings.utf_16",
    "encodings.utf_32",
    "encodings.hex_codec",
    "encodings.base64_codec",
    "encodings.raw_unicode_escape",
    "encodings.unicode_escape",
    // socket.getaddrinfo encodes every str host name with it (networking).
    "encodings.idna",
];
/// Extension modules the minimal profile keeps (every other one is removed
/// before the closure is computed, so kept modules fall back to their pure-
/// Python versions: `_pydecimal`, asyncio's Python tasks, hashlib's built-in
/// hashes, ...). Both link nothing but libc. `_contextvars` (14 KB) has no
/// fallback and decimal and asyncio need it; `_json` (49 KB) makes the
/// preloaded `json` 7 times faster (measured: 2.8 ms instead of 20.3 ms to
/// dump and load a 160 KB document).
const MINIMAL_EXTENSIONS: &[&str] = &["_json", "_contextvars"];
/// Parts of the standard library no sandbox needs, in every profile.
const NEVER: &[&str] = &[
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3/tests",
];
/// Computes, packs and checks the minimal standard library (see the top).
const STDLIB_SCRIPT: &str = include_str!("stdlib.py");

const LIB: &str = "usr/lib/python3.11";
const BIN: &str = "usr/bin/python3.11";
/// The zip Python puts on `sys.path` by default (`<prefix>/lib/python311.zip`).
const ZIP: &str = "usr/lib/python311.zip";

/// Every module the minimal profile promises to import.
pub fn minimal_modules() -> Vec<&'static str> {
    zeroboot_proto::PYTHON_PRELOAD
        .split(',')
        .chain(MINIMAL_KEEP.iter().copied())
        .collect()
}

/// Mixes what decides the staged tree's contents, besides the packages,
/// into an image's digest.
pub fn fingerprint(digest: Fingerprint) -> Fingerprint {
    digest
        .mix(STDLIB_SCRIPT.as_bytes())
        .mix(minimal_modules().join(",").as_bytes())
        .mix(MINIMAL_EXTENSIONS.join(",").as_bytes())
}

fn remove(path: &Path) -> Result<(), ImageError> {
    let result = if path.is_dir() && !path.is_symlink() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(ImageError::io("cannot remove", path))
}

/// Keeps only the entries of `dir` for which `keep` (given the file name)
/// says so.
fn keep_only(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<(), ImageError> {
    for entry in fs::read_dir(dir).map_err(ImageError::io("cannot list", dir))? {
        let entry = entry.map_err(ImageError::io("cannot list", dir))?;
        if !keep(&entry.file_name().to_string_lossy()) {
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

/// Extracts the packages into `work/root`, without what no profile needs.
fn unpack(debs: &[PathBuf], work: &Path) -> Result<PathBuf, ImageError> {
    let root = work.join("root");
    for deb in debs {
        Debian::extract(deb, &root)?;
    }
    keep_only(&root, |n| n == "usr")?;
    keep_only(&root.join("usr"), |n| ["bin", "lib"].contains(&n))?;
    keep_only(&root.join("usr/bin"), |n| n == "python3.11")?;
    keep_only(&root.join("usr/lib"), |n| n == "python3.11")?;
    for part in NEVER {
        let path = root.join(LIB).join(part);
        if path.exists() {
            remove(&path)?;
        }
    }
    keep_only(&root.join(LIB).join("lib-dynload"), |n| {
        !["_test", "xx", "_xx", "_ctypes_test"]
            .iter()
            .any(|p| n.starts_with(p))
    })?;
    drop_dangling_links(&root)?;
    std::os::unix::fs::symlink("python3.11", root.join("usr/bin/python3"))
        .map_err(ImageError::io("cannot link", root.join("usr/bin/python3")))?;
    Ok(root)
}

/// The staged interpreter as a host command, run by the staged loader on
/// the staged libraries: Debian's Python on Debian's glibc whatever the
/// host's is (its libraries must be installed in `root` first).
pub fn interpreter(root: &Path) -> Command {
    let lib_path = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
        .map(|d| root.join(d).display().to_string())
        .join(":");
    // The loader's path is an absolute symlink: resolve it inside the tree.
    let loader = super::scoped::resolve(root, Path::new("/lib64/ld-linux-x86-64.so.2"), true)
        .unwrap_or_else(|_| root.join("lib64/ld-linux-x86-64.so.2"));
    let mut cmd = Command::new(loader);
    cmd.arg("--inhibit-cache")
        .arg("--library-path")
        .arg(lib_path)
        .arg(root.join(BIN));
    cmd
}

/// Compiles `dir` (the whole staged standard library for the full
/// profile, or site-packages) next to its sources with the staged
/// interpreter (same version, same magic number), recording guest paths in
/// the code objects.
pub fn compile(root: &Path, dir: &Path) -> Result<(), ImageError> {
    let mut cmd = interpreter(root);
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
    .args(["-p", "/"])
    .arg(dir);
    command::run(&mut cmd).map(drop)
}

/// Runs `stdlib.py` (written to `work`) with the staged interpreter.
fn stdlib_script(root: &Path, work: &Path, args: &[&Path]) -> Result<(), ImageError> {
    let script = work.join("stdlib.py");
    fs::write(&script, STDLIB_SCRIPT).map_err(ImageError::io("cannot write", &script))?;
    let mut cmd = interpreter(root);
    cmd.args(["-I", "-B"])
        .arg(&script)
        .args(args)
        .args(minimal_modules());
    command::run(&mut cmd).map(drop)
}

/// Removes the extension modules the minimal profile does not keep.
fn prune_extensions(root: &Path) -> Result<(), ImageError> {
    keep_only(&root.join(LIB).join("lib-dynload"), |n| {
        MINIMAL_EXTENSIONS
            .iter()
            .any(|e| n.split('.').next() == Some(e))
    })
}

/// Replaces the staged standard library with the minimal profile's zip (see
/// the module docs) and [`MINIMAL_EXTENSIONS`], then checks that every
/// module of [`minimal_modules`] imports from what is left.
fn pack_minimal(root: &Path, work: &Path) -> Result<(), ImageError> {
    let lib = root.join(LIB);
    stdlib_script(root, work, &[Path::new("pack"), &root.join(ZIP)])?;
    // lib-dynload stays even when empty: it is how Python finds its
    // exec_prefix from its own location (else it takes the compiled-in /usr,
    // which on the build host is the host's Python).
    keep_only(&lib, |n| n == "lib-dynload")?;
    stdlib_script(root, work, &[Path::new("check")])
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

/// Stages Python for `profile` under `work/root` from the three Python
/// packages' `debs`, with the shared libraries it loads taken from
/// `sysroot` (Debian's packages unpacked); returns the tree's root, to be
/// packed into the initramfs as `/`.
pub fn stage(
    debs: &[PathBuf],
    sysroot: &Path,
    profile: Profile,
    work: &Path,
) -> Result<PathBuf, ImageError> {
    eprintln!("zeroboot image: staging Python ({profile:?} profile)");
    let root = unpack(debs, work)?;
    if profile == Profile::Minimal {
        prune_extensions(&root)?;
    }
    let libs = libs::closure(sysroot, &elf_files(&root)?)?;
    libs::install(&libs, sysroot, &root)?;
    eprintln!("zeroboot image: precompiling the standard library");
    match profile {
        Profile::Full => compile(&root, &root.join(LIB))?,
        Profile::Minimal => pack_minimal(&root, work)?,
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_modules_hold_the_issue_promise_once_each() {
        let modules = minimal_modules();
        for promised in ["json", "os", "random"] {
            assert!(modules.contains(&promised), "{promised} missing");
        }
        let mut unique = modules.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), modules.len(), "a module is listed twice");
    }
}
