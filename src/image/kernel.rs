//! The guest kernel: Debian's `linux-image-cloud-amd64` (a bzImage with the
//! 8250 serial driver built in), resolved from the meta-package to the
//! versioned kernel package and unpacked into the cache, with the few
//! modules a sandbox's network needs ([`NET_MODULES`], loaded by the agent
//! only when a sandbox asks for network) next to it in `modules/`.

use super::ImageError;
use super::apt::Apt;
use std::fs;
use std::path::{Path, PathBuf};

/// The meta-package that always depends on the current cloud kernel.
const META: &str = "linux-image-cloud-amd64";

/// Modules the image carries: every network link's.
pub const NET_MODULES: [&[&str]; 2] = [
    zeroboot_proto::VIRTIO_NET_MODULES,
    zeroboot_proto::TAP_NET_MODULES,
];

fn net_modules() -> impl Iterator<Item = &'static str> {
    NET_MODULES.iter().flat_map(|m| m.iter().copied())
}

/// The network modules next to a cached `vmlinuz`, when all are there.
pub fn modules_of(vmlinuz: &Path) -> Option<PathBuf> {
    let dir = vmlinuz.parent()?.join("modules");
    net_modules()
        .all(|m| dir.join(format!("{m}.ko")).is_file())
        .then_some(dir)
}

/// Copies the network modules found anywhere under the unpacked package's
/// `lib/modules` into `into`, as `NAME.ko`.
fn copy_modules(package: &str, unpacked: &Path, into: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(into).map_err(ImageError::io("cannot create", into))?;
    let mut stack = vec![unpacked.join("lib/modules")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(ImageError::io("cannot list", &dir))? {
            let path = entry.map_err(ImageError::io("cannot list", &dir))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            match name.as_deref().and_then(|n| n.strip_suffix(".ko")) {
                _ if path.is_dir() => stack.push(path),
                Some(m) if net_modules().any(|w| w == m) => {
                    let to = into.join(format!("{m}.ko"));
                    fs::copy(&path, &to).map_err(ImageError::io("cannot copy", &path))?;
                }
                _ => {}
            }
        }
    }
    match net_modules().find(|m| !into.join(format!("{m}.ko")).is_file()) {
        Some(_) => Err(ImageError::PackageContents {
            package: package.into(),
            what: "network kernel module (virtio_net, tun and their dependencies, as .ko)",
        }),
        None => Ok(()),
    }
}

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
    if vmlinuz.is_file() && modules_of(&vmlinuz).is_some() {
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
    copy_modules(&package, &staging, &dir.join("modules"))?;
    fs::rename(&image, &vmlinuz).map_err(ImageError::io("cannot move the kernel to", &vmlinuz))?;
    fs::remove_dir_all(&staging).map_err(ImageError::io("cannot remove", &staging))?;
    Ok(vmlinuz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_modules_are_copied_flat_and_a_missing_one_is_an_error() {
        let root = std::env::temp_dir().join(format!("zeroboot-mods-{}", std::process::id()));
        let tree = root.join("unpacked/lib/modules/6.1.0-1-cloud-amd64/kernel");
        for (i, m) in net_modules().enumerate() {
            let dir = tree.join(format!("sub{}", i % 3));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(format!("{m}.ko")), m).unwrap();
        }
        fs::write(tree.join("sub0/unrelated.ko"), b"x").unwrap();
        let into = root.join("kernel/modules");
        copy_modules("pkg", &root.join("unpacked"), &into).unwrap();
        assert_eq!(modules_of(&root.join("kernel/vmlinuz")), Some(into.clone()));
        assert!(!into.join("unrelated.ko").exists());
        assert_eq!(fs::read(into.join("tun.ko")).unwrap(), b"tun");
        fs::remove_file(tree.join("sub0/virtio.ko")).unwrap();
        fs::remove_dir_all(&into).unwrap();
        assert!(matches!(
            copy_modules("pkg", &root.join("unpacked"), &into),
            Err(ImageError::PackageContents { .. })
        ));
        assert_eq!(modules_of(&root.join("kernel/vmlinuz")), None);
        fs::remove_dir_all(root).unwrap();
    }

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
