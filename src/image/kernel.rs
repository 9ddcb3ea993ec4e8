//! The guest kernel: Debian's `linux-image-cloud-amd64` (a bzImage with the
//! 8250 serial driver built in), resolved from the meta-package to the
//! versioned kernel package and unpacked into the cache, with the few
//! modules a sandbox's network needs ([`NET_MODULES`] and what they depend
//! on, loaded by the agent only when a sandbox asks for network) next to it
//! in `modules/`.

use super::ImageError;
use super::debian::{Debian, Package};
use super::progress::Reporter;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The meta-package that always depends on the current cloud kernel.
const META: &str = "linux-image-cloud-amd64";

/// Modules the image carries: every network link's (their dependencies
/// come along).
pub const NET_MODULES: [&[&str]; 2] = [
    zeroboot_proto::VIRTIO_NET_MODULES,
    zeroboot_proto::TAP_NET_MODULES,
];

fn net_modules() -> impl Iterator<Item = &'static str> {
    NET_MODULES.iter().flat_map(|m| m.iter().copied())
}

/// The network modules next to a cached `vmlinuz`, when they are there.
pub fn modules_of(vmlinuz: &Path) -> Option<PathBuf> {
    let dir = vmlinuz.parent()?.join("modules");
    net_modules()
        .all(|m| dir.join(format!("{m}.ko")).is_file())
        .then_some(dir)
}

/// Every `.ko` under `root`, by module name (`-` in file names is `_` in
/// module names).
fn index_modules(root: &Path) -> Result<HashMap<String, PathBuf>, ImageError> {
    let mut found = HashMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(ImageError::io("cannot list", &dir))? {
            let path = entry.map_err(ImageError::io("cannot list", &dir))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(m) = path
                .file_name()
                .and_then(|n| n.to_str()?.strip_suffix(".ko"))
            {
                found.insert(m.replace('-', "_"), path);
            }
        }
    }
    Ok(found)
}

/// Copies the network modules and everything they depend on, found
/// anywhere under the unpacked package's `lib/modules`, into `into` as
/// `NAME.ko` (through a staging directory: `into` appears whole or not at all).
fn copy_modules(package: &str, unpacked: &Path, into: &Path) -> Result<(), ImageError> {
    let index = index_modules(&unpacked.join("lib/modules"))?;
    let staging = into.with_extension("partial");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(ImageError::io("cannot remove", &staging))?;
    }
    fs::create_dir_all(&staging).map_err(ImageError::io("cannot create", &staging))?;
    let mut wanted: Vec<String> = net_modules().map(str::to_owned).collect();
    let mut copied = HashSet::new();
    while let Some(m) = wanted.pop() {
        if !copied.insert(m.clone()) {
            continue;
        }
        let from = index.get(&m).ok_or_else(|| ImageError::PackageContents {
            package: package.into(),
            what: "network kernel module (virtio_net, tun or one they depend on, as .ko)",
        })?;
        let ko = fs::read(from).map_err(ImageError::io("cannot read", from))?;
        wanted.extend(
            zeroboot_proto::module_depends(&ko).map(|d| String::from_utf8_lossy(d).into_owned()),
        );
        let to = staging.join(format!("{m}.ko"));
        fs::write(&to, &ko).map_err(ImageError::io("cannot write", &to))?;
    }
    if into.exists() {
        fs::remove_dir_all(into).map_err(ImageError::io("cannot remove", into))?;
    }
    fs::rename(&staging, into).map_err(ImageError::io("cannot move modules to", into))
}

/// The network modules of the kernel `vmlinuz` (from the cache), by file
/// name, sorted: what an image packs into
/// [`zeroboot_proto::NET_MODULE_DIR`]. None for a kernel of the user's own.
pub fn packed_modules(vmlinuz: &Path) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let Some(dir) = modules_of(vmlinuz) else {
        return Ok(Vec::new());
    };
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(ImageError::io("cannot list", &dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".ko"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let path = dir.join(&n);
            let bytes = fs::read(&path).map_err(ImageError::io("cannot read", &path))?;
            Ok((n, bytes))
        })
        .collect()
}

/// Writes `modules` (from [`packed_modules`]) into the image tree `root`.
pub fn install_modules(modules: &[(String, Vec<u8>)], root: &Path) -> Result<(), ImageError> {
    let dir = root.join(zeroboot_proto::NET_MODULE_DIR.trim_start_matches('/'));
    fs::create_dir_all(&dir).map_err(ImageError::io("cannot create", &dir))?;
    for (name, bytes) in modules {
        let to = dir.join(name);
        fs::write(&to, bytes).map_err(ImageError::io("cannot write", &to))?;
    }
    Ok(())
}

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
    if vmlinuz.is_file() && modules_of(&vmlinuz).is_some() {
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
    copy_modules(&package, &staging, &dir.join("modules"))?;
    fs::rename(&image, &vmlinuz).map_err(ImageError::io("cannot move the kernel to", &vmlinuz))?;
    fs::remove_dir_all(&staging).map_err(ImageError::io("cannot remove", &staging))?;
    Ok(vmlinuz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_modules_come_with_their_dependencies_and_a_missing_one_is_an_error() {
        let root = std::env::temp_dir().join(format!("zeroboot-mods-{}", std::process::id()));
        let tree = root.join("unpacked/lib/modules/6.1.0-1-cloud-amd64/kernel");
        let ko = |deps: &str| format!("\x7fELF\0depends={deps}\0intree=Y\0");
        for (dir, name, deps) in [
            ("drivers/virtio", "virtio_mmio", "virtio,virtio_ring"),
            ("drivers/virtio", "virtio", "virtio_ring"),
            ("drivers/virtio", "virtio_ring", ""),
            ("drivers/net", "virtio_net", "virtio,net_failover"),
            ("drivers/net", "net_failover", "failover"),
            ("net/core", "failover", ""),
            ("drivers/net", "tun", ""),
            ("drivers/net", "unrelated", ""),
        ] {
            fs::create_dir_all(tree.join(dir)).unwrap();
            fs::write(tree.join(dir).join(format!("{name}.ko")), ko(deps)).unwrap();
        }
        let into = root.join("kernel/modules");
        copy_modules("pkg", &root.join("unpacked"), &into).unwrap();
        assert_eq!(modules_of(&root.join("kernel/vmlinuz")), Some(into.clone()));
        let mut packed: Vec<_> = fs::read_dir(&into)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        packed.sort();
        assert_eq!(
            packed,
            [
                "failover.ko",
                "net_failover.ko",
                "tun.ko",
                "virtio.ko",
                "virtio_mmio.ko",
                "virtio_net.ko",
                "virtio_ring.ko"
            ]
        );
        // A dependency the package lacks: no modules directory at all.
        fs::remove_file(tree.join("net/core/failover.ko")).unwrap();
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
