//! Linux guests in tests: finding the guest image (from the lane's
//! environment, else built), skipping or failing when there is none, and
//! printing error chains.

use std::path::PathBuf;

use zeroboot::engine::{DEFAULT_LINUX_MEMORY_MIB, Engine, EngineConfig, EngineError, TemplateInfo};
use zeroboot::vmm::Flavor;

pub fn require_linux() -> bool {
    std::env::var("ZEROBOOT_REQUIRE_LINUX").as_deref() == Ok("1")
}

pub fn skip(test: &str, reason: &str) {
    if require_linux() {
        panic!("{test}: ZEROBOOT_REQUIRE_LINUX=1 but {reason}");
    }
    eprintln!("SKIPPED {test}: {reason} (set ZEROBOOT_REQUIRE_LINUX=1 to make this a failure)");
}

pub fn env_path(name: &str) -> Option<PathBuf> {
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

/// The lane's template spec (tests/template_spec.rs, tests/run_code.rs):
/// numpy, Debian's nodejs, the full standard library.
pub fn lane_spec() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/specs/numpy/zeroboot.toml")
}

/// An engine (a pool of two) with a template built from the lane's spec,
/// whose image the host prepared (the lane builds it before booting L1);
/// without that image, the default image's template ([`linux_template`]).
/// The host's deadline is 20 s past the guest's (not 0.5 s): under
/// emulation a runtime stopped at its in-guest deadline takes seconds to
/// go, and the guest's own deadline is what these tests check.
pub fn spec_template(test: &str) -> Option<(Engine, TemplateInfo)> {
    let engine = linux_engine(
        test,
        EngineConfig {
            exec_host_grace_ms: 20_000,
            ..pool_of_two()
        },
    )?;
    let spec = zeroboot::spec::Spec::load(&lane_spec()).expect("the lane's spec");
    let cancel = zeroboot::engine::CancelToken::new();
    match engine.build_from_spec(&spec, &Default::default(), &mut |_| {}, &cancel) {
        Ok(built) => Some((engine, built.info)),
        Err(EngineError::Image(e)) => {
            eprintln!(
                "{test}: no image of {} ({}); using the default image",
                lane_spec().display(),
                chain(&e)
            );
            image_template(engine, test)
        }
        Err(e) => panic!("{}", chain(&e)),
    }
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

pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s = format!("{s}: {c}");
        cause = c.source();
    }
    s
}

fn pool_of_two() -> EngineConfig {
    EngineConfig {
        pool_size: 2,
        ..Default::default()
    }
}

/// An engine made with `config`; `None` (after saying so) where Linux
/// guests cannot run.
fn linux_engine(test: &str, config: EngineConfig) -> Option<Engine> {
    let engine = Engine::new(config).expect("KVM engine");
    if engine.flavor() == Flavor::Pvm {
        skip(
            test,
            "/dev/kvm is kvm-pvm, which cannot boot a stock kernel (run it in tests/kvm-lane)",
        );
        return None;
    }
    Some(engine)
}

/// An engine (a pool of two) with a template built from the guest image;
/// `None` (after saying so) where Linux guests cannot run.
pub fn linux_template(test: &str) -> Option<(Engine, TemplateInfo)> {
    image_template(linux_engine(test, pool_of_two())?, test)
}

/// `engine` with a template built from the guest image.
fn image_template(engine: Engine, test: &str) -> Option<(Engine, TemplateInfo)> {
    let (kernel, initramfs) = image(test)?;
    // RUST_LOG=zeroboot::guest=info streams the guest's console while it boots.
    let _already = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let tpl = engine
        .build_template(
            &kernel,
            &initramfs,
            DEFAULT_LINUX_MEMORY_MIB,
            None,
            &zeroboot::engine::CancelToken::new(),
        )
        .unwrap_or_else(|e| match &e {
            EngineError::LinuxBoot { console, .. } => {
                panic!("{}\n--- guest console ---\n{console}", chain(&e))
            }
            _ => panic!("{}", chain(&e)),
        });
    assert_eq!(tpl.memory_bytes, DEFAULT_LINUX_MEMORY_MIB << 20);
    Some((engine, tpl))
}
