//! Finding a Linux guest image for tests that boot one, and skipping (or,
//! with `ZEROBOOT_REQUIRE_LINUX=1`, failing) when there is none.

use std::path::PathBuf;

pub fn require_linux() -> bool {
    std::env::var("ZEROBOOT_REQUIRE_LINUX").as_deref() == Ok("1")
}

pub fn skip(test: &str, reason: &str) {
    if require_linux() {
        panic!("{test}: ZEROBOOT_REQUIRE_LINUX=1 but {reason}");
    }
    eprintln!("SKIPPED {test}: {reason} (set ZEROBOOT_REQUIRE_LINUX=1 to make this a failure)");
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A kernel named by the environment, else the kvm-lane cache's.
pub fn kernel() -> Option<PathBuf> {
    env_path("ZEROBOOT_LINUX_KERNEL")
        .or_else(|| env_path("ZEROBOOT_LANE_KERNEL"))
        .or_else(|| {
            let cache = env_path("ZEROBOOT_LANE_CACHE")
                .unwrap_or_else(|| PathBuf::from("/var/cache/zeroboot-lane"));
            let boot = cache.join("bookworm/kernel/boot");
            let mut found: Vec<PathBuf> = std::fs::read_dir(boot)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                })
                .collect();
            found.sort();
            found.pop()
        })
}

/// Kernel and initramfs: from the environment, else built (or found in the
/// image cache) by `zeroboot::image::build`.
pub fn image(test: &str) -> Option<(PathBuf, PathBuf)> {
    if let (Some(k), Some(i)) = (kernel(), env_path("ZEROBOOT_LINUX_INITRAMFS")) {
        return Some((k, i));
    }
    if std::env::var("ZEROBOOT_LANE").as_deref() == Ok("1") {
        skip(
            test,
            "ZEROBOOT_LINUX_INITRAMFS is not set inside the lane (no apt or cargo there to build one)",
        );
        return None;
    }
    match zeroboot::image::build(&zeroboot::image::BuildOptions::default()) {
        Ok(paths) => Some((paths.kernel, paths.initramfs)),
        Err(e) => {
            skip(test, &format!("no guest image: {e}"));
            None
        }
    }
}
