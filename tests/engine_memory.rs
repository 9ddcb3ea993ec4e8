//! Memory limits: a sandbox that dirties more than its own limit is stopped
//! with a typed error, while it runs and without exiting, and no other
//! sandbox notices.

mod support;

use support::*;
use zeroboot::engine::{EngineError, ForkOptions};

const MIB: u64 = 1 << 20;

#[test]
fn a_sandbox_that_dirties_past_its_limit_is_stopped_and_others_go_on() {
    if !kvm_or_skip("a_sandbox_that_dirties_past_its_limit_is_stopped_and_others_go_on") {
        return;
    }
    let (e, t) = engine();
    let small = ForkOptions {
        memory_limit: Some(4 * MIB),
        ..Default::default()
    };
    let limited = e.fork_with(&t, &small).unwrap().sandbox;
    let neighbour = e.fork(&t).unwrap().sandbox;
    // 2 MiB fits under 4 MiB.
    assert_eq!(stdout(&e, &limited, &["dirty", "512"]), "");
    // 24 MiB in one exec, with no exit between the pages.
    match run(&e, &limited, &["dirty", "6144"]) {
        Err(EngineError::SandboxMemoryLimit { limit, dirty }) => {
            assert_eq!(limit, 4 * MIB);
            eprintln!(
                "stopped at {dirty} bytes (limit {limit}), ring {}",
                e.dirty_check_pages()
            );
            assert!(dirty > limit, "{dirty}");
            let slack = u64::from(e.dirty_check_pages()) * 4096;
            assert!(
                dirty <= limit + slack,
                "stopped {dirty} bytes in, limit {limit}"
            );
        }
        other => panic!("expected a memory limit error, got {other:?}"),
    }
    assert!(matches!(
        run(&e, &limited, &["echo", "x"]),
        Err(EngineError::SandboxUnusable { .. })
    ));
    // The neighbour has the default limit (the template's 32 MiB).
    assert_eq!(stdout(&e, &neighbour, &["dirty", "6144"]), "");
    assert_eq!(
        stdout(&e, &neighbour, &["echo", "still", "here"]),
        "still here\n"
    );
    e.kill(&limited).unwrap();
    // Its VM was recycled and serves a new tenant with a fresh count.
    let next = e.fork_with(&t, &small).unwrap().sandbox;
    assert_eq!(stdout(&e, &next, &["dirty", "512"]), "");
    e.shutdown();
}

#[test]
fn a_zero_limit_is_refused() {
    if !kvm_or_skip("a_zero_limit_is_refused") {
        return;
    }
    let (e, t) = engine();
    let zero = ForkOptions {
        memory_limit: Some(0),
        ..Default::default()
    };
    assert!(matches!(
        e.fork_with(&t, &zero),
        Err(EngineError::InvalidRequest(_))
    ));
    e.shutdown();
}

/// Waits until the budget's charge is `want` (VMs release theirs from their
/// own threads once closed), or 20 s; returns the charge then.
fn settle(e: &zeroboot::engine::Engine, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while e.memory_budget().1 != want && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    e.memory_budget().1
}

#[test]
fn a_branch_is_charged_what_it_captured_until_no_layer_shows_it() {
    if !kvm_or_skip("a_branch_is_charged_what_it_captured_until_no_layer_shows_it") {
        return;
    }
    use zeroboot::engine::{Branching, CancelToken, EngineConfig, Unload};
    let (e, t) = engine_with(EngineConfig {
        pool_size: 0,
        ..Default::default()
    });
    let start = e.memory_budget().1;
    let sb = e.fork(&t).unwrap().sandbox;
    assert_eq!(stdout(&e, &sb, &["dirty", "1024"]), "");
    let before = e.memory_budget().1;
    let b1 = e
        .snapshot_sandbox(&sb, Branching::Layer, &CancelToken::new())
        .unwrap();
    // At least the 4 MiB it dirtied, at 4352 bytes a page; no more than the
    // pages the sandbox held (the guest's own few besides).
    assert!(
        b1.charged_bytes >= 1024 * 4352 && b1.charged_bytes <= 1400 * 4352,
        "{b1:?}"
    );
    assert_eq!(b1.charged_bytes, b1.memory.own_bytes / 4096 * 4352);
    // Pages the capture made and did not keep wait for the next branch,
    // charged apart; without them, the budget grew by the branch's charge.
    e.release_kept_memory();
    assert_eq!(e.memory_budget().1 - before, b1.charged_bytes);
    // A branch of the branch shows b1's pages: they stay charged after b1
    // is unloaded, and go with the last layer showing them.
    let sb2 = e.fork(&b1.template).unwrap().sandbox;
    assert_eq!(stdout(&e, &sb2, &["echo", "x"]), "x\n");
    let b2 = e
        .snapshot_sandbox(&sb2, Branching::Layer, &CancelToken::new())
        .unwrap();
    e.kill(&sb2).unwrap();
    e.unload_template(&b1.template, Unload::IfUnused).unwrap();
    let b2_now = e
        .list_templates()
        .into_iter()
        .find(|i| i.template == b2.template)
        .unwrap();
    assert!(b2_now.charged_bytes >= b1.charged_bytes, "{b2_now:?}");
    e.kill(&sb).unwrap();
    e.unload_template(&b2.template, Unload::IfUnused).unwrap();
    assert_eq!(settle(&e, start), start, "everything given back");
    e.shutdown();
}
