//! Shared helpers for engine tests: KVM gating and short-hand execs.
#![allow(dead_code)]

pub mod linux;

use std::time::Duration;

use zeroboot::engine::{
    Branching, CancelToken, Engine, EngineConfig, EngineError, ExecRequest, ExecResult,
    TemplateInfo,
};

/// Returns false (after saying so) when /dev/kvm is missing; panics instead when
/// ZEROBOOT_REQUIRE_KVM=1, so CI can never skip KVM tests silently.
pub fn kvm_or_skip(test: &str) -> bool {
    if std::path::Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("ZEROBOOT_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("{test}: /dev/kvm is missing and ZEROBOOT_REQUIRE_KVM=1");
    }
    eprintln!("skipping {test}: no /dev/kvm on this host");
    false
}

/// An engine with the bare template loaded.
pub fn engine_with(config: EngineConfig) -> (Engine, String) {
    let engine = Engine::new(config).expect("KVM engine");
    let t = engine.load_builtin("bare").expect("bare template").template;
    (engine, t)
}

pub fn engine() -> (Engine, String) {
    engine_with(EngineConfig::default())
}

/// A fork of template `t`.
pub fn fork(e: &Engine, t: &str) -> String {
    e.fork(t).expect("fork").sandbox
}

/// Sandbox `sb` captured as a branch (a layer over its template).
pub fn branch(e: &Engine, sb: &str) -> TemplateInfo {
    e.snapshot_sandbox(sb, Branching::Layer, &CancelToken::new())
        .expect("snapshot")
}

pub fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn run(engine: &Engine, sb: &str, argv: &[&str]) -> Result<ExecResult, EngineError> {
    exec(engine, sb, &req(argv))
}

pub fn exec(engine: &Engine, sb: &str, r: &ExecRequest) -> Result<ExecResult, EngineError> {
    engine.exec(sb, r, &CancelToken::new(), &mut |_, _| {})
}

pub fn stdout(engine: &Engine, sb: &str, argv: &[&str]) -> String {
    let r = run(engine, sb, argv).expect("exec");
    assert_eq!(
        r.exit_code,
        Some(0),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8(r.stdout).expect("utf-8 output")
}

/// `argv` with a deadline of `ms` (the host stops the guest
/// `exec_host_grace_ms` later).
pub fn timeout(ms: u64, argv: &[&str]) -> ExecRequest {
    ExecRequest {
        timeout: Some(Duration::from_millis(ms)),
        ..req(argv)
    }
}
