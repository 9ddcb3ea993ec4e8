//! Debian bookworm packages on demand: what `zeroboot image debs` does for
//! the project's own tools (the kvm-lane's QEMU with its libraries, its
//! kernel with modules, busybox, cpio). The same [`Debian`] that builds
//! guest images resolves, downloads and unpacks them, so every package the
//! project fetches comes through one apt configuration of its own: never
//! the host's sources, keys or package database, whatever the host runs.

use super::debian::{Deb, Debian, Package};
use super::progress::{Phase, Progress, Reporter};
use super::{ImageError, cache, kernel};
use std::path::PathBuf;

/// What to fetch.
#[derive(Debug, Clone, Default)]
pub struct DebsRequest {
    /// Cache directory; apt's configuration, lists and downloads live in its
    /// `debian/` (default: [`cache::default_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Package names; `name=version` pins a version.
    pub packages: Vec<String>,
    /// With their dependency closure (Depends and Pre-Depends, resolved by
    /// apt against an empty system: nothing the host has installed counts).
    pub closure: bool,
    /// Adds Debian's cloud kernel: the versioned package
    /// `linux-image-cloud-amd64` names (modules included), without the
    /// tools installing a kernel would need.
    pub kernel: bool,
    /// Unpacks every package into this directory (`dpkg-deb -x`;
    /// maintainer scripts are never run).
    pub extract: Option<PathBuf>,
}

/// The candidate of `spec` (`name` or `name=version`) without its closure.
fn candidate(debian: &Debian, spec: &str) -> Result<Package, ImageError> {
    let fields = debian.show(spec)?;
    match (fields.get("Package"), fields.get("Version")) {
        (Some(name), Some(version)) => Ok(Package {
            name: name.clone(),
            version: version.clone(),
        }),
        // apt-cache prints nothing, successfully, for an unknown version.
        _ => Err(ImageError::DebianUnresolvable {
            packages: spec.to_owned(),
            detail: "no such version".into(),
        }),
    }
}

/// Resolves, downloads (what the cache lacks) and optionally unpacks the
/// request; returns the packages in name order with their `.deb` files.
pub fn fetch(req: &DebsRequest, progress: Reporter<'_>) -> Result<Vec<Deb>, ImageError> {
    let cache = match &req.cache_dir {
        Some(dir) => dir.clone(),
        None => cache::default_dir()?,
    };
    let _lock = cache::lock(&cache)?;
    let debian = Debian::open(&cache.join("debian"))?;
    progress(&Progress::step(Phase::Resolve, "Debian packages"));
    let mut packages = if req.closure {
        debian.closure(&req.packages)?
    } else {
        req.packages
            .iter()
            .map(|spec| candidate(&debian, spec))
            .collect::<Result<_, _>>()?
    };
    if req.kernel {
        packages.push(kernel::package(&debian)?);
    }
    packages.sort();
    packages.dedup();
    let debs = debian.fetch(&packages, progress)?;
    if let Some(dir) = &req.extract {
        for (i, deb) in debs.iter().enumerate() {
            progress(&Progress {
                phase: Phase::Assemble,
                done: i as u64,
                total: None,
                message: format!("unpacking into {}", dir.display()),
            });
            Debian::extract(&deb.path, dir)?;
        }
    }
    Ok(debs)
}
