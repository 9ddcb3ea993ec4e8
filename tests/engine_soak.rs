//! 10,000 fork/exec/kill cycles leave the process's descriptors and memory
//! where they started: nothing leaks per sandbox.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Open descriptors and what each points at.
fn fds() -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            // The listing's own descriptor.
            if target.ends_with("fd") && target.starts_with("/proc") {
                return None;
            }
            Some((
                e.file_name().to_string_lossy().into_owned(),
                target.display().to_string(),
            ))
        })
        .collect()
}

/// Descriptors after the run, given `before`: a pooled VM's thread may still
/// be opening or closing one when the pool looks settled, so a difference
/// must persist for 10 s to count as a leak.
fn fds_settled(before: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = fds();
        let added: Vec<String> = now
            .iter()
            .filter(|(fd, target)| before.get(*fd) != Some(*target))
            .map(|(fd, target)| format!("{fd} -> {target}"))
            .collect();
        if now.len() <= before.len() || Instant::now() > deadline {
            return added;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let (fds_before, rss) = (fds(), rss_kib());
    for i in 0..10_000 {
        let sb = e.fork(&t).unwrap().sandbox;
        assert_eq!(stdout(&e, &sb, &["echo", "x"]), "x\n", "cycle {i}");
        e.kill(&sb).unwrap();
    }
    settle(&e);
    let leaked = fds_settled(&fds_before);
    let rss_after = rss_kib();
    assert!(
        fds().len() <= fds_before.len(),
        "descriptors leaked: {leaked:?}"
    );
    assert!(
        rss_after < rss + 8 * 1024,
        "RSS grew from {rss} KiB to {rss_after} KiB"
    );
}
