//! The Linux guest image: a kernel and an initramfs whose `/init` is the
//! zeroboot agent (`guest/agent`) next to a precompiled Python 3.11.
//!
//! Why it is built this way:
//! - **Debian bookworm's packages, never installed, whatever the host.**
//!   The kernel (`linux-image-cloud-amd64`, 6.1: a bzImage with the 8250
//!   serial driver built in) and Python (`python3.11-minimal`,
//!   `libpython3.11-minimal`, `libpython3.11-stdlib`, with their dependency
//!   closure) come from zeroboot's own apt configuration ([`debian`]: its own
//!   sources list, keys, lists and cache; never the host's) and are unpacked
//!   with `dpkg-deb -x` into the cache: the host's `/boot` and package
//!   database are never touched, and the versions are Debian's security-
//!   maintained ones. The shared libraries the guest gets come from those
//!   packages too ([`libs`] reads the ELF files; the host's own libraries
//!   are never copied), and the staged interpreter runs on the host through
//!   the staged loader, so an Ubuntu host builds the same image as a Debian
//!   one. Hosts without apt get [`ImageError::NoApt`] and can pass their own
//!   kernel and initramfs instead.
//! - **Python is precompiled.** The packages ship no `.pyc`; a fork that had
//!   to compile what it imports would pay for it on every exec. The staged
//!   interpreter compiles the tree with `unchecked-hash` pycs (see
//!   `python.rs`), and the agent imports common modules before the snapshot.
//! - **Small by default.** [`Profile::Minimal`] is the interpreter and the
//!   light, commonly used part of the standard library: the modules the
//!   staged interpreter loads for its startup, the agent's preload list and
//!   a short documented keep list (`python.rs`), zipped as `.pyc` compiled
//!   without docstrings. 12.9 MB raw, measured (12,899,000 bytes;
//!   interpreter 6.81 MB, glibc/libm/libz/libexpat/loader 3.35 MB, agent
//!   1.25 MB, standard library 1.49 MB: a 1.42 MB zip of 143 modules and
//!   two extension modules), down from 17.6 MB when it was Debian's whole
//!   minimal standard library plus `json` as plain `.pyc` files. Since then
//!   the kernel's network modules (0.43 MB) and the agent's code runner
//!   (agent 1.35 MB) came in: 13,516,292 bytes measured.
//!   [`Profile::Full`] is the whole standard library with sources, its
//!   extension modules and their libraries (OpenSSL, SQLite, ...: 47.3 MB
//!   raw).
//! - **Cached.** Downloads (`debs/`), the unpacked kernel (`kernel/`) and
//!   each initramfs (`initramfs/<profile>-<digest>.cpio`, the digest covering
//!   the agent, the package files, the profile and what decides the minimal
//!   standard library) stay in the cache
//!   directory ([`cache::default_dir`]); a rebuild with the same inputs is a
//!   lookup. A new initramfs replaces the older ones of its profile. Builds
//!   hold a lock on the directory, so concurrent builds wait for each other.
//!   Delete the directory to pick up newer packages.
//! - **Uncompressed initramfs.** Boot time under emulation is dominated by
//!   decompression otherwise, and with snapshots the image is read once.
//!   Only the minimal standard library's zip is compressed: a module is
//!   inflated when imported, and most are imported once, before the snapshot.
//!
//! Progress goes to stderr. The kernel command line for the image is
//! [`KERNEL_CMDLINE`] plus, outside zeroboot's VMM, the agent's transport
//! (`zeroboot.transport=serial:/dev/ttyS1`, see the agent's `config.rs`).

mod agent;
pub mod cache;
mod command;
mod cpio;
pub mod debian;
pub mod debs;
mod error;
pub mod helper;
mod initramfs;
mod kernel;
pub mod layers;
mod libs;
pub mod oci;
pub mod progress;
mod python;
mod scoped;
pub mod spec_image;
pub mod wheels;

pub use agent::{build as build_agent, build_node_addon, is_static, source_tree};
pub use error::ImageError;
pub use python::minimal_modules;

use std::path::{Path, PathBuf};

/// Kernel command line the image is meant to boot with: serial console,
/// quiet, reboot instead of hanging on panic, trust the CPU's RNG at boot,
/// and skip the legacy probes (i8042, CMOS RTC) that stall minimal VMs.
/// No transparent huge pages: Debian's kernel backs any aligned 2 MiB of
/// anonymous memory with one when it can, so a fork's small allocation
/// (or khugepaged collapsing pages behind it) zeroes or copies 2 MiB of
/// guest memory, 512 pages made private to that fork, or not, depending
/// on how fragmented the template's free memory happened to be.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t random.trust_cpu=on \
     i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd initcall_blacklist=cmos_init \
     transparent_hugepage=never";

/// How much of the standard library the image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// Interpreter and the commonly used part of the standard library
    /// (startup, the agent's preloads, a keep list, what they import), as a
    /// zip of `.pyc` without docstrings.
    #[default]
    Minimal,
    /// The whole standard library (minus tests and GUI), sources included.
    Full,
}

/// Inputs of [`build`].
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Cache directory (default: [`cache::default_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Standard library size.
    pub profile: Profile,
    /// A prebuilt static agent (default: built from the source tree with cargo).
    pub agent: Option<PathBuf>,
    /// The user's own kernel, used as is.
    pub kernel: Option<PathBuf>,
    /// The user's own initramfs, used as is.
    pub initramfs: Option<PathBuf>,
}

/// What [`build`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePaths {
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs (newc cpio, uncompressed).
    pub initramfs: PathBuf,
}

fn given(what: &'static str, path: &Path) -> Result<PathBuf, ImageError> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        Err(ImageError::Missing {
            what,
            path: path.to_owned(),
        })
    }
}

/// Version of the image layout, part of every initramfs digest: bump it when
/// the build changes what it packs.
const LAYOUT_VERSION: &[u8] = b"zeroboot-image-3";

/// Mixes the `.deb` files' names (package, version, architecture) into `digest`.
fn mix_debs(mut digest: cache::Fingerprint, debs: &[debian::Deb]) -> cache::Fingerprint {
    for deb in debs {
        digest = digest.mix(
            deb.path
                .file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
    }
    digest
}

/// Unpacks every package of `debs` into `sysroot` (emptied first): where
/// the image's shared libraries are looked up.
fn unpack_sysroot(debs: &[debian::Deb], sysroot: &Path) -> Result<(), ImageError> {
    if sysroot.exists() {
        std::fs::remove_dir_all(sysroot).map_err(ImageError::io("cannot remove", sysroot))?;
    }
    for deb in debs {
        debian::Debian::extract(&deb.path, sysroot)?;
    }
    Ok(())
}

/// The three Python packages among `debs`.
fn python_debs(debs: &[debian::Deb]) -> Vec<PathBuf> {
    debs.iter()
        .filter(|d| python::PACKAGES.contains(&d.package.name.as_str()))
        .map(|d| d.path.clone())
        .collect()
}

/// An emptied work directory.
fn fresh_dir(dir: &Path) -> Result<(), ImageError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(ImageError::io("cannot remove", dir))?;
    }
    std::fs::create_dir_all(dir).map_err(ImageError::io("cannot create", dir))
}

/// Builds the initramfs; `modules` are the network modules of the kernel
/// it will boot with ([`kernel::packed_modules`]).
fn build_initramfs(
    debian: &debian::Debian,
    cache: &Path,
    opts: &BuildOptions,
    modules: &[(String, Vec<u8>)],
) -> Result<PathBuf, ImageError> {
    let agent = agent::locate(opts.agent.as_deref())?;
    let packages = debian.closure(&python::PACKAGES.map(String::from))?;
    let debs = debian.fetch(&packages, &mut |_| {})?;
    let agent_bytes = std::fs::read(&agent).map_err(ImageError::io("cannot read", &agent))?;
    let mut digest = python::fingerprint(cache::Fingerprint::default())
        .mix(LAYOUT_VERSION)
        .mix(format!("{:?}", opts.profile).as_bytes())
        .mix(&agent_bytes);
    for (name, bytes) in modules {
        digest = digest.mix(name.as_bytes()).mix(bytes);
    }
    let digest = mix_debs(digest, &debs);
    let dir = cache.join("initramfs");
    let out = dir.join(format!("{:?}-{}.cpio", opts.profile, digest.hex()).to_lowercase());
    if out.is_file() {
        eprintln!("zeroboot image: initramfs cached at {}", out.display());
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).map_err(ImageError::io("cannot create", &dir))?;
    let work = cache.join("work");
    fresh_dir(&work)?;
    let sysroot = work.join("sysroot");
    unpack_sysroot(&debs, &sysroot)?;
    let tree = python::stage(&python_debs(&debs), &sysroot, opts.profile, &work)?;
    kernel::install_modules(modules, &tree)?;
    eprintln!("zeroboot image: packing {}", out.display());
    initramfs::write(&agent, &tree, &layers::Owners::new(), &out)?;
    std::fs::remove_dir_all(&work).map_err(ImageError::io("cannot remove", &work))?;
    prune(&dir, &out)?;
    Ok(out)
}

/// Removes the older initramfs files of `newest`'s profile (each agent
/// change makes a new one), so the cache holds one per profile.
fn prune(dir: &Path, newest: &Path) -> Result<(), ImageError> {
    let name = newest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((profile, _)) = name.split_once('-') else {
        return Ok(());
    };
    for entry in std::fs::read_dir(dir).map_err(ImageError::io("cannot list", dir))? {
        let path = entry.map_err(ImageError::io("cannot list", dir))?.path();
        let other = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path != newest && other.starts_with(&format!("{profile}-")) && other.ends_with(".cpio") {
            std::fs::remove_file(&path).map_err(ImageError::io("cannot remove", &path))?;
        }
    }
    Ok(())
}

/// Builds (or finds in the cache) the guest kernel and initramfs.
pub fn build(opts: &BuildOptions) -> Result<ImagePaths, ImageError> {
    if let (Some(kernel), Some(initramfs)) = (&opts.kernel, &opts.initramfs) {
        return Ok(ImagePaths {
            kernel: given("kernel", kernel)?,
            initramfs: given("initramfs", initramfs)?,
        });
    }
    let cache = match &opts.cache_dir {
        Some(dir) => dir.clone(),
        None => cache::default_dir()?,
    };
    let _lock = cache::lock(&cache)?;
    let debian = debian::Debian::open(&cache.join("debian"))?;
    let (kernel, modules) = match &opts.kernel {
        Some(k) => (given("kernel", k)?, Vec::new()),
        None => {
            let k = kernel::fetch(&debian, &cache, &mut |_| {})?;
            let modules = kernel::packed_modules(&k)?;
            (k, modules)
        }
    };
    let initramfs = match &opts.initramfs {
        Some(i) => given("initramfs", i)?,
        None => build_initramfs(&debian, &cache, opts, &modules)?,
    };
    Ok(ImagePaths { kernel, initramfs })
}

/// What the cache already holds, without downloading or building anything
/// (for `zeroboot doctor`): kernels and initramfs files, sorted by path.
pub fn cached(cache_dir: Option<&Path>) -> Result<Vec<PathBuf>, ImageError> {
    let cache = match cache_dir {
        Some(dir) => dir.to_owned(),
        None => cache::default_dir()?,
    };
    let mut found = Vec::new();
    let kernels = cache.join("kernel");
    for dir in [&kernels, &cache.join("initramfs")] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue; // nothing built yet
        };
        for entry in entries {
            let path = entry.map_err(ImageError::io("cannot list", dir))?.path();
            let path = if dir == &kernels {
                path.join("vmlinuz")
            } else {
                path
            };
            if path.is_file() && (dir == &kernels || path.extension().is_some_and(|e| e == "cpio"))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_lists_kernels_and_initramfs_files_only() {
        let dir = std::env::temp_dir().join(format!("zeroboot-cached-{}", std::process::id()));
        let kernel = dir.join("kernel/linux-image-x");
        std::fs::create_dir_all(&kernel).unwrap();
        std::fs::create_dir_all(dir.join("initramfs")).unwrap();
        std::fs::write(kernel.join("vmlinuz"), b"k").unwrap();
        std::fs::write(dir.join("initramfs/minimal-aa.cpio"), b"i").unwrap();
        std::fs::write(dir.join("initramfs/minimal-bb.partial"), b"p").unwrap();
        assert_eq!(
            cached(Some(&dir)).unwrap(),
            [
                dir.join("initramfs/minimal-aa.cpio"),
                kernel.join("vmlinuz")
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(cached(Some(&dir)).unwrap().is_empty());
    }

    #[test]
    fn prune_keeps_the_newest_of_its_profile_and_other_profiles() {
        let dir = std::env::temp_dir().join(format!("zeroboot-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "minimal-aa.cpio",
            "minimal-bb.cpio",
            "full-cc.cpio",
            "minimal-dd.partial",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        prune(&dir, &dir.join("minimal-bb.cpio")).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["full-cc.cpio", "minimal-bb.cpio", "minimal-dd.partial"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
