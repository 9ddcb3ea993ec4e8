//! The shared libraries a set of ELF files needs, found in a *sysroot*: the
//! Debian bookworm packages unpacked for the image, never the host's own
//! libraries (an Ubuntu host's glibc is not the guest's). Each file's
//! `DT_NEEDED` entries are looked up in its own `RPATH`/`RUNPATH` (so a
//! wheel's bundled `.libs` are found where they are) and then in Debian's
//! library directories, as the guest's loader will; the loader named by
//! `PT_INTERP` comes along too. Symlinks resolve inside the sysroot.

use super::ImageError;
use super::scoped;
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// Where Debian's loader looks (multiarch first), relative to the root.
const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "lib",
    "usr/lib",
];
/// ELF files larger than this are not parsed (no library is this big).
const MAX_ELF: u64 = 1 << 30;

/// What one ELF file asks of the loader.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `PT_INTERP`, if any.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` sonames.
    pub libraries: Vec<String>,
    /// `DT_RUNPATH` and `DT_RPATH` entries, `$ORIGIN` unexpanded.
    pub search: Vec<String>,
}

/// Parses what `bytes` (an ELF file) needs; `None` if it is not ELF.
pub fn needs(bytes: &[u8]) -> Option<Needs> {
    let elf = goblin::elf::Elf::parse(bytes).ok()?;
    let mut search: Vec<String> = Vec::new();
    for list in elf.runpaths.iter().chain(&elf.rpaths) {
        search.extend(list.split(':').filter(|s| !s.is_empty()).map(str::to_owned));
    }
    Some(Needs {
        interpreter: elf.interpreter.map(str::to_owned),
        libraries: elf.libraries.iter().map(|s| (*s).to_owned()).collect(),
        search,
    })
}

/// True when `path` starts with the ELF magic.
pub fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"\x7fELF")
}

/// The libraries (paths relative to `sysroot`) that `elves` (host paths of
/// files already in the image) load, transitively. Libraries found beside
/// an ELF file through its `$ORIGIN` search path are in the image already
/// and are only walked, not returned.
pub fn closure(sysroot: &Path, elves: &[PathBuf]) -> Result<BTreeSet<PathBuf>, ImageError> {
    let mut out = BTreeSet::new();
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let mut queue: VecDeque<PathBuf> = elves.iter().cloned().collect();
    while let Some(file) = queue.pop_front() {
        if !seen.insert(file.clone()) {
            continue;
        }
        let meta = std::fs::metadata(&file).map_err(ImageError::io("cannot stat", &file))?;
        if meta.len() > MAX_ELF {
            continue;
        }
        let bytes = std::fs::read(&file).map_err(ImageError::io("cannot read", &file))?;
        let Some(n) = needs(&bytes) else { continue };
        if let Some(interp) = &n.interpreter {
            let chain = sysroot_file(sysroot, Path::new(interp))?.ok_or_else(|| {
                ImageError::MissingLibrary {
                    binary: file.clone(),
                    library: interp.clone(),
                }
            })?;
            queue.extend(chain.last().map(|f| sysroot.join(f)));
            out.extend(chain);
        }
        let origin = file.parent().unwrap_or(Path::new("/")).to_owned();
        for lib in &n.libraries {
            let beside = n.search.iter().find_map(|dir| {
                let dir = dir
                    .strip_prefix("$ORIGIN")
                    .or_else(|| dir.strip_prefix("${ORIGIN}"))?;
                let p = origin.join(dir.trim_start_matches('/')).join(lib);
                p.is_file().then_some(p)
            });
            if let Some(p) = beside {
                queue.push_back(p);
                continue;
            }
            let found = LIB_DIRS
                .iter()
                .map(|d| sysroot_file(sysroot, &Path::new(d).join(lib)))
                .find_map(|r| r.transpose())
                .transpose()?;
            let chain = found.ok_or_else(|| ImageError::MissingLibrary {
                binary: file.clone(),
                library: lib.clone(),
            })?;
            queue.extend(chain.last().map(|f| sysroot.join(f)));
            out.extend(chain);
        }
    }
    Ok(out)
}

/// `path` in the sysroot, relative to it, if it names a file: the path
/// itself and, when it is a symlink, every link on the way and the file it
/// ends at (all resolved inside the sysroot), so the image gets Debian's
/// layout: links stay links and no library is copied twice.
fn sysroot_file(sysroot: &Path, path: &Path) -> Result<Option<Vec<PathBuf>>, ImageError> {
    let scope = |p: &Path| {
        scoped::resolve(sysroot, p, false).map_err(|e| ImageError::Io {
            action: "cannot resolve",
            path: p.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })
    };
    let mut chain = Vec::new();
    let mut here = scope(path)?;
    for _ in 0..40 {
        let rel = here.strip_prefix(sysroot).unwrap_or(&here).to_owned();
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                let target =
                    std::fs::read_link(&here).map_err(ImageError::io("cannot read link", &here))?;
                let next = match target.is_absolute() {
                    true => target,
                    false => Path::new("/")
                        .join(rel.parent().unwrap_or(Path::new("")))
                        .join(target),
                };
                chain.push(rel);
                here = scope(&next)?;
            }
            Ok(m) if m.is_file() => {
                chain.push(rel);
                return Ok(Some(chain));
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Copies each library (relative to `sysroot`) to the same path under
/// `root`; symlinks are recreated as they are.
pub fn install(libs: &BTreeSet<PathBuf>, sysroot: &Path, root: &Path) -> Result<(), ImageError> {
    for lib in libs {
        let (src, dest) = (sysroot.join(lib), root.join(lib));
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(ImageError::io("cannot create", dir))?;
        }
        if std::fs::symlink_metadata(&dest).is_ok() {
            continue; // already there (an unpacked package put it)
        }
        let meta = std::fs::symlink_metadata(&src).map_err(ImageError::io("cannot stat", &src))?;
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&src).map_err(ImageError::io("cannot read link", &src))?;
            std::os::unix::fs::symlink(&target, &dest)
                .map_err(ImageError::io("cannot link", &dest))?;
        } else {
            std::fs::copy(&src, &dest).map_err(ImageError::io("cannot copy library", &src))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_needs_libc_through_the_loader() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let n = needs(&me).unwrap();
        assert_eq!(
            n.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(n.libraries.iter().any(|l| l == "libc.so.6"), "{n:?}");
        assert_eq!(needs(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn closure_is_found_in_the_sysroot_and_a_missing_library_is_named() {
        // A sysroot holding this host's loader and libc under Debian's
        // layout (with bookworm's absolute loader symlink).
        let root = std::env::temp_dir().join(format!("zeroboot-libs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let multiarch = root.join("lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&multiarch).unwrap();
        std::fs::create_dir_all(root.join("lib64")).unwrap();
        let me = std::env::current_exe().unwrap();
        let n = needs(&std::fs::read(&me).unwrap()).unwrap();
        // Where this process really mapped its libraries from: the host's
        // layout differs between distributions (and in the lane's L1).
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mapped = |name: &str| {
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .find(|p| Path::new(p).file_name() == Some(name.as_ref()))
                .unwrap_or_else(|| panic!("{name} is not mapped"))
                .to_owned()
        };
        for lib in &n.libraries {
            std::fs::copy(mapped(lib), multiarch.join(lib)).unwrap();
        }
        std::fs::copy(
            mapped("ld-linux-x86-64.so.2"),
            multiarch.join("ld-linux-x86-64.so.2"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            root.join("lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        let libs = closure(&root, std::slice::from_ref(&me)).unwrap();
        assert!(
            libs.contains(Path::new("lib64/ld-linux-x86-64.so.2")),
            "{libs:?}"
        );
        assert!(
            libs.contains(Path::new("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")),
            "{libs:?}"
        );
        assert!(
            libs.contains(Path::new("lib/x86_64-linux-gnu/libc.so.6")),
            "{libs:?}"
        );
        let image = root.join("image");
        install(&libs, &root, &image).unwrap();
        let loader = image.join("lib64/ld-linux-x86-64.so.2");
        assert!(loader.is_symlink(), "the loader link stays a link");
        assert!(
            image
                .join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
                .is_file()
        );
        std::fs::remove_file(multiarch.join("libc.so.6")).unwrap();
        match closure(&root, &[me]) {
            Err(ImageError::MissingLibrary { library, .. }) => assert_eq!(library, "libc.so.6"),
            other => panic!("expected a missing library, got {other:?}"),
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
