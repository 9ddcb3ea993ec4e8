//! 10,000 fork/exec/kill cycles leave the process's descriptors and memory
//! where they started: nothing leaks per sandbox.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until exactly the pool's VMs are alive and the pool is full, so the
/// before and after measurements see the same set of VMs.
fn settle(e: &zeroboot::engine::Engine) {
    let pool = e.config().pool_size;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(zeroboot::vmm::live_vms() == pool && e.list_templates()[0].pooled == pool) {
        assert!(
            Instant::now() < deadline,
            "VMs did not settle: {} live",
            zeroboot::vmm::live_vms()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ten_thousand_cycles_leak_nothing() {
    if !kvm_or_skip("ten_thousand_cycles_leak_nothing") {
        return;
    }
    let (e, t) = engine();
    // Warm up: let the pool fill and allocators reach steady state.
    for _ in 0..200 {
        let sb = e.fork(&t).unwrap().sandbox;
        stdout(&e, &sb, &["echo", "warm"]);
        e.kill(&sb).unwrap();
    }
    settle(&e);
    let (fds, rss) = (fd_count(), rss_kib());
    for i in 0..10_000 {
        let sb = e.fork(&t).unwrap().sandbox;
        assert_eq!(stdout(&e, &sb, &["echo", "x"]), "x\n", "cycle {i}");
        e.kill(&sb).unwrap();
    }
    settle(&e);
    let (fds_after, rss_after) = (fd_count(), rss_kib());
    assert_eq!(fds_after, fds, "descriptors leaked");
    assert!(
        rss_after < rss + 8 * 1024,
        "RSS grew from {rss} KiB to {rss_after} KiB"
    );
}
