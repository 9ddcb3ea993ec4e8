//! The guest kernel: Debian's `linux-image-cloud-amd64` (a bzImage with the
//! 8250 serial driver built in), resolved from the meta-package to the
//! versioned kernel package and unpacked into the cache.

use super::ImageError;
use super::apt::Apt;
use std::fs;
use std::path::{Path, PathBuf};

/// The meta-package that always depends on the current cloud kernel.
const META: &str = "linux-image-cloud-amd64";

/// The kernel package named in the meta-package's `Depends` field.
fn kernel_package(depends: &str) -> Option<&str> {
    depends
        .split(',')
        .filter_map(|dep| dep.split_whitespace().next())
        .find(|name| name.starts_with("linux-image-") && *name != META)
}

/// Returns the cached kernel image, fetching it first if needed.
pub fn fetch(apt: &Apt, cache: &Path) -> Result<PathBuf, ImageError> {
    let meta = apt.fetch(META)?;
    let depends = Apt::field(&meta, "Depends")?;
    let package = kernel_package(&depends)
        .ok_or_else(|| ImageError::PackageContents {
            package: META.into(),
            what: "kernel dependency",
        })?
        .to_owned();
    let dir = cache.join("kernel").join(&package);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    let deb = apt.fetch(&package)?;
    eprintln!("zeroboot image: unpacking {package}");
    let staging = cache.join("kernel").join(format!("{package}.unpack"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(ImageError::io("cannot remove", &staging))?;
    }
    Apt::extract(&deb, &staging)?;
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
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            kernel_package("initramfs-tools, linux-image-6.1.0-9-cloud-amd64"),
            Some("linux-image-6.1.0-9-cloud-amd64")
        );
        assert_eq!(kernel_package("libc6"), None);
    }
}
