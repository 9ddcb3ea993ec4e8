//! Builds the bare guest (guest/bare) from source during the main build and
//! hands its flat image to the crate as `ZEROBOOT_BARE_GUEST`.
//!
//! The guest is its own cargo project (freestanding, custom link script), so it
//! is built by a nested cargo with a separate target directory: no registry, no
//! download, no extra rustup target.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let guest = root.join("guest/bare");
    for watched in [
        "guest/bare/src",
        "guest/bare/Cargo.toml",
        "guest/bare/link.ld",
        "guest/bare/build.rs",
        "proto/src",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join("bare-guest");
    let status = Command::new(cargo)
        .current_dir(&guest)
        .args(["build", "--release", "--offline", "--target-dir"])
        .arg(&target_dir)
        // The outer build's flags (coverage, sanitizers, target) must not leak in.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Crelocation-model=static")
        .status()
        .expect("failed to run cargo for the bare guest");
    assert!(status.success(), "building the bare guest failed");
    let elf = target_dir.join("release/zeroboot-bare-guest");
    let flat = out.join("bare-guest.bin");
    let status = Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&flat)
        .status()
        .expect("failed to run objcopy (binutils) for the bare guest");
    assert!(status.success(), "objcopy of the bare guest failed");
    println!("cargo:rustc-env=ZEROBOOT_BARE_GUEST={}", flat.display());
}
