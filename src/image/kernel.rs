//! The guest kernel: Debian's `linux-image-cloud-amd64` (a bzImage with the
//! 8250 serial driver built in), resolved from the meta-package to the
//! versioned kernel package and unpacked into the cache.

use super::ImageError;
use super::debian::{Debian, Package};
use super::progress::Reporter;
use std::fs;
use std::path::{Path, PathBuf};

/// The meta-package that always depends on the current cloud kernel.
const META: &str = "linux-image-cloud-amd64";

/// The kernel package named in the meta-package's `Depends` field, with
/// the version it pins (`name (= version)`).
fn kernel_package(depends: &str) -> Option<Package> {
    depends.split(',').find_map(|dep| {
        let mut words = dep.split_whitespace();
        let name = words.next()?;
        if !name.starts_with("linux-image-") || name == META {
            return None;
        }
        let rest: String = words.collect::<Vec<_>>().join(" ");
        let version = rest
            .strip_prefix("(=")
            .and_then(|v| v.strip_suffix(')'))
            .map(|v| v.trim().to_owned())?;
        Some(Package {
            name: name.to_owned(),
            version,
        })
    })
}

/// The kernel package the meta-package currently names. Only that package
/// is ever downloaded: its dependencies (initramfs-tools, kmod, ...) are for
/// installing it, which never happens.
pub fn package(debian: &Debian) -> Result<Package, ImageError> {
    let fields = debian.show(META)?;
    fields
        .get("Depends")
        .and_then(|d| kernel_package(d))
        .ok_or_else(|| ImageError::PackageContents {
            package: META.into(),
            what: "versioned kernel dependency",
        })
}

/// Returns the cached kernel image, fetching it first if needed.
pub fn fetch(debian: &Debian, cache: &Path, progress: Reporter<'_>) -> Result<PathBuf, ImageError> {
    let package = package(debian)?;
    let dir = cache.join("kernel").join(&package.name);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    let debs = debian.fetch(std::slice::from_ref(&package), progress)?;
    let deb = &debs[0].path;
    let package = package.name;
    eprintln!("zeroboot image: unpacking {package}");
    let staging = cache.join("kernel").join(format!("{package}.unpack"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(ImageError::io("cannot remove", &staging))?;
    }
    Debian::extract(deb, &staging)?;
    let boot = staging.join("boot");
    let image = fs::read_dir(&boot)
        .map_err(ImageError::io("cannot list", &boot))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| ImageError::PackageContents {
            package: package.clone(),
            what: "boot/vmlinuz-*",
        })?;
    fs::create_dir_all(&dir).map_err(ImageError::io("cannot create", &dir))?;
    fs::rename(&image, &vmlinuz).map_err(ImageError::io("cannot move the kernel to", &vmlinuz))?;
    fs::remove_dir_all(&staging).map_err(ImageError::io("cannot remove", &staging))?;
    Ok(vmlinuz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_package_is_the_versioned_image() {
        let depends = "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)";
        assert_eq!(
            kernel_package(depends),
            Some(Package {
                name: "linux-image-6.1.0-56-cloud-amd64".into(),
                version: "6.1.192-2".into()
            })
        );
        assert_eq!(
            kernel_package("initramfs-tools, linux-image-6.1.0-9-cloud-amd64 (= 6.1.27-1)")
                .map(|p| p.name),
            Some("linux-image-6.1.0-9-cloud-amd64".into())
        );
        assert_eq!(kernel_package("libc6"), None);
        assert_eq!(kernel_package("linux-image-6.1.0-9-cloud-amd64"), None);
    }
}
