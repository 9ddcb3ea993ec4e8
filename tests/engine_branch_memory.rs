//! Memory a branch holds is given back when nothing needs it, and the
//! worker's RSS shows it. In a test binary of their own (their own process),
//! one test at a time, so no other test's memory moves the RSS they read.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use support::*;
use zeroboot::engine::Unload;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Held by each test: one at a time in this process.
static ALONE: Mutex<()> = Mutex::new(());

/// Waits (up to 5 s) for `cond` on the worker's RSS.
fn rss_settles(cond: impl Fn(u64) -> bool) -> u64 {
    for _ in 0..500 {
        let r = rss_kib();
        if cond(r) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    rss_kib()
}

#[test]
fn memory_is_given_back_when_no_template_or_sandbox_needs_it() {
    if !kvm_or_skip("memory_is_given_back_when_no_template_or_sandbox_needs_it") {
        return;
    }
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    const MIB: u64 = 1024;
    let (e, root) = engine();
    let a = fork(&e, &root);
    stdout(&e, &a, &["dirty", "4096"]);
    let base = rss_settles(|_| true);
    let b = branch(&e, &a);
    assert!(b.memory.own_bytes >= 16 << 20);
    let with_branch = rss_kib();
    assert!(
        with_branch >= base + 14 * MIB,
        "the branch's 16 MiB show in RSS: {base} -> {with_branch} KiB"
    );
    // Unloading the branch frees it: nothing else needs its pages.
    e.unload_template(&b.template, Unload::IfUnused).unwrap();
    let after_unload = rss_settles(|r| r < base + 4 * MIB);
    assert!(
        after_unload < base + 4 * MIB,
        "unloaded: {base} -> {with_branch} -> {after_unload} KiB"
    );
    // A fork keeps its branch alive after the unload; killing it frees both
    // the branch and the fork's copy (its VM is recycled: pages dropped).
    let b = branch(&e, &a);
    let c = fork(&e, &b.template);
    assert_eq!(stdout(&e, &c, &["echo", "ok"]), "ok\n");
    e.unload_template(&b.template, Unload::KeepSandboxes)
        .unwrap();
    let held = rss_kib();
    assert!(held >= base + 28 * MIB, "branch and fork: {held} KiB");
    assert_eq!(stdout(&e, &c, &["echo", "still"]), "still\n");
    e.kill(&c).unwrap();
    let after_kill = rss_settles(|r| r < base + 4 * MIB);
    assert!(
        after_kill < base + 4 * MIB,
        "last fork killed: {base} -> {held} -> {after_kill} KiB"
    );
}

#[test]
fn a_branch_reuses_the_pages_of_one_gone_before_it() {
    if !kvm_or_skip("a_branch_reuses_the_pages_of_one_gone_before_it") {
        return;
    }
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    const MIB: u64 = 1024;
    let (e, root) = engine();
    let a = fork(&e, &root);
    stdout(&e, &a, &["dirty", "2048"]);
    let base = rss_settles(|_| true);
    let first = branch(&e, &a);
    let with_first = rss_kib();
    assert!(
        with_first >= base + 7 * MIB,
        "the first branch's 8 MiB are new memory: {base} -> {with_first} KiB"
    );
    // Its pages are kept for the next branch, which copies into them: the
    // worker's memory does not grow again (without the reserve, the unload
    // frees 8 MiB and the next branch makes 8 MiB anew).
    e.unload_template(&first.template, Unload::IfUnused)
        .unwrap();
    let after_unload = rss_kib();
    let second = branch(&e, &a);
    let with_second = rss_kib();
    assert!(
        with_second < after_unload + 2 * MIB,
        "the next branch reuses them: {base} -> {with_first} -> {after_unload} -> {with_second} KiB"
    );
    assert_eq!(second.memory.own_bytes, first.memory.own_bytes);
}
