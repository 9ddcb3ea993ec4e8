//! What each live sandbox adds to the worker process's address space. Every
//! KVM VM registers an MMU notifier on it, and registering walks every mapping
//! (VMA) the process has, so each mapping a sandbox adds makes every later VM
//! creation slower (docs/create-scaling.md).

mod support;

use support::*;
use zeroboot::engine::EngineConfig;

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn a_sandbox_adds_at_most_four_mappings() {
    if !kvm_or_skip("a_sandbox_adds_at_most_four_mappings") {
        return;
    }
    // No pool: no background thread creates VMs while mappings are counted.
    let (e, t) = engine_with(EngineConfig {
        pool_size: 0,
        ..Default::default()
    });
    let warm = e.fork(&t).unwrap().sandbox;
    stdout(&e, &warm, &["echo", "warm"]);
    let before = mappings();
    const N: usize = 50;
    for _ in 0..N {
        let sb = e.fork(&t).unwrap().sandbox;
        assert_eq!(stdout(&e, &sb, &["echo", "x"]), "x\n");
    }
    let added = mappings() - before;
    // Guest memory, the vCPU's kvm_run page and the thread's stack; plus its
    // guard page on kernels before 6.13 (no MADV_GUARD_INSTALL). Threads
    // started by std::thread added three more each.
    assert!(
        added <= 4 * N,
        "{N} sandboxes added {added} mappings ({} each)",
        added as f64 / N as f64
    );
    e.shutdown();
}
