//! The agent binary that becomes `/init`. It must be static (the initramfs
//! has no loader for it at that path and the agent must run even if the
//! Python libraries are absent), so it is either given prebuilt or built
//! here with glibc's static libc and the size-tuned `guest-agent` profile
//! (see the workspace's Cargo.toml):
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build -p zeroboot-agent
//! --profile guest-agent --target x86_64-unknown-linux-gnu`.

use super::{ImageError, command};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo profile the agent is built with (size over speed).
const PROFILE: &str = "guest-agent";

/// `PT_INTERP`: the program header naming a dynamic loader.
const PT_INTERP: u32 = 3;

/// True when `elf` is a 64-bit little-endian ELF without a dynamic loader.
pub fn is_static(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != PT_INTERP)
    })
}

/// The zeroboot source tree this binary was built from, if it is still there.
pub fn source_tree() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    root.join("guest/agent/Cargo.toml")
        .is_file()
        .then(|| root.to_owned())
}

/// Builds package `package` of `source` with the guest profile, into its
/// own target directory (so it never waits on the lock of a cargo that is
/// running us), with `rustflags`; returns the profile's output directory.
fn cargo_build(
    source: &Path,
    package: &str,
    dir: &str,
    rustflags: &str,
) -> Result<PathBuf, ImageError> {
    let target_dir = source.join("target").join(dir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(source)
        .args([
            "build",
            "-p",
            package,
            "--profile",
            PROFILE,
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", rustflags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    command::run(&mut cmd)?;
    Ok(target_dir.join("x86_64-unknown-linux-gnu").join(PROFILE))
}

/// Builds the static agent from `source` and returns the binary's path.
pub fn build(source: &Path) -> Result<PathBuf, ImageError> {
    eprintln!("zeroboot image: building the static agent (cargo)");
    // Static glibc (the profile strips symbols and debug info).
    let out = cargo_build(
        source,
        "zeroboot-agent",
        "agent-static",
        "-C target-feature=+crt-static",
    )?;
    Ok(out.join("zeroboot-agent"))
}

/// Builds the Node.js module that reseeds OpenSSL in the guest's JavaScript
/// workers (`guest/node-reseed`; dynamically linked: Node loads it) and
/// returns its path.
pub fn build_node_addon(source: &Path) -> Result<PathBuf, ImageError> {
    eprintln!("zeroboot image: building the Node.js reseed module (cargo)");
    let out = cargo_build(source, "zeroboot-node-reseed", "node-addon", "")?;
    Ok(out.join("libzeroboot_node_reseed.so"))
}

/// The Node.js reseed module to pack into an image that has Node.js:
/// `$ZEROBOOT_NODE_ADDON` if set, else built from the source tree.
pub fn locate_node_addon() -> Result<PathBuf, ImageError> {
    match std::env::var_os("ZEROBOOT_NODE_ADDON").filter(|p| !p.is_empty()) {
        Some(p) if Path::new(&p).is_file() => Ok(PathBuf::from(p)),
        Some(p) => Err(ImageError::Missing {
            what: "Node.js reseed module ($ZEROBOOT_NODE_ADDON)",
            path: PathBuf::from(p),
        }),
        None => build_node_addon(&buildable_source()?),
    }
}

/// The source tree to build guest programs from, when cargo is there too.
fn buildable_source() -> Result<PathBuf, ImageError> {
    if !command::exists("cargo") && std::env::var_os("CARGO").is_none() {
        return Err(ImageError::NoAgentSource);
    }
    source_tree().ok_or(ImageError::NoAgentSource)
}

/// The agent to pack: `explicit` if given, else `$ZEROBOOT_AGENT`, else
/// built from the source tree. Either way it must be static.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ImageError> {
    let from_env = from_env();
    let path = match explicit.or(from_env.as_deref()) {
        Some(p) if !p.is_file() => {
            return Err(ImageError::Missing {
                what: "agent",
                path: p.to_owned(),
            });
        }
        Some(p) => p.to_owned(),
        None => build(&buildable_source()?)?,
    };
    let bytes = std::fs::read(&path).map_err(ImageError::io("cannot read", &path))?;
    if !is_static(&bytes) {
        return Err(ImageError::AgentNotStatic(path));
    }
    Ok(path)
}

/// The agent `$ZEROBOOT_AGENT` names, if set.
pub fn from_env() -> Option<PathBuf> {
    std::env::var_os("ZEROBOOT_AGENT")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header of type `ptype`.
    fn elf_with(ptype: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&ptype.to_le_bytes());
        elf
    }

    #[test]
    fn interpreter_header_means_dynamic() {
        assert!(is_static(&elf_with(1)));
        assert!(!is_static(&elf_with(PT_INTERP)));
        assert!(!is_static(b"#!/bin/sh\n"));
        let mut cut = elf_with(1);
        cut.truncate(66); // p_type cut in half
        assert!(!is_static(&cut));
    }

    #[test]
    fn this_test_binary_is_dynamic() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static(&me));
    }
}
