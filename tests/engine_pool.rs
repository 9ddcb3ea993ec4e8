//! What the pool does behind a caller's back: a steady loop of forks and
//! kills is served by recycled VMs alone (no VM created or torn down per
//! cycle), and a sandbox killed before it ran anything goes back without a
//! reset (so no work piles up in front of the next exec).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::*;

/// Ids of this process's VM threads.
fn vm_threads() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            comm.starts_with("vcpu-")
                .then(|| t.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// CPU time the VM threads in `ids` have used, in clock ticks.
fn vm_cpu_ticks(ids: &BTreeSet<String>) -> u64 {
    ids.iter()
        .filter_map(|id| std::fs::read_to_string(format!("/proc/self/task/{id}/stat")).ok())
        .map(|stat| {
            let rest = stat.rsplit_once(')').unwrap().1;
            let mut f = rest.split_whitespace().skip(11);
            let utime: u64 = f.next().unwrap().parse().unwrap();
            let stime: u64 = f.next().unwrap().parse().unwrap();
            utime + stime
        })
        .sum()
}

fn wait_for_full_pool(e: &zeroboot::engine::Engine) {
    let pool = e.config().pool_size;
    let deadline = Instant::now() + Duration::from_secs(60);
    while e.list_templates()[0].pooled < pool {
        assert!(Instant::now() < deadline, "the pool never filled");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One test, so no other engine's VM threads are counted.
#[test]
fn the_pool_does_no_work_a_caller_did_not_cause() {
    if !kvm_or_skip("the_pool_does_no_work_a_caller_did_not_cause") {
        return;
    }
    a_loop_of_fork_exec_kill_creates_and_destroys_no_vm();
    a_sandbox_that_never_ran_is_recycled_without_a_reset();
}

fn a_loop_of_fork_exec_kill_creates_and_destroys_no_vm() {
    let (e, t) = engine();
    wait_for_full_pool(&e);
    let before = vm_threads();
    assert_eq!(before.len(), e.config().pool_size);
    for _ in 0..200 {
        let sb = e.fork(&t).unwrap().sandbox;
        assert_eq!(stdout(&e, &sb, &["echo", "x"]), "x\n");
        e.kill(&sb).unwrap();
    }
    // Give a refiller that would have woken time to act.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        vm_threads(),
        before,
        "the same VMs served every fork: none created, none torn down"
    );
    e.shutdown();
    let deadline = Instant::now() + Duration::from_secs(60);
    while zeroboot::vmm::live_vms() > 0 {
        assert!(Instant::now() < deadline, "VMs outlived their engine");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn a_sandbox_that_never_ran_is_recycled_without_a_reset() {
    let (e, t) = engine();
    wait_for_full_pool(&e);
    let vms = vm_threads();
    // What 500 resets (with their execs) cost the VM threads here, whatever
    // the host's speed (the lane's emulated KVM is far slower).
    let cpu = vm_cpu_ticks(&vms);
    for _ in 0..500 {
        let sb = e.fork(&t).unwrap().sandbox;
        assert_eq!(stdout(&e, &sb, &["echo", "x"]), "x\n");
        e.kill(&sb).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let resets = vm_cpu_ticks(&vms) - cpu;
    let cpu = vm_cpu_ticks(&vms);
    for _ in 0..2000 {
        let sb = e.fork(&t).unwrap().sandbox;
        e.kill(&sb).unwrap();
    }
    // Any reset queued by those kills runs before this exec on its VM.
    let sb = e.fork(&t).unwrap().sandbox;
    assert_eq!(stdout(&e, &sb, &["echo", "x"]), "x\n");
    e.kill(&sb).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // 2000 resets would cost more than the 500 above (measured: 22 ticks
    // against 4); none should be queued.
    let spent = vm_cpu_ticks(&vms) - cpu;
    assert!(
        spent < resets.max(4),
        "2000 forks and kills cost the VM threads {spent} ticks (500 execs and resets: {resets}): kills queued resets"
    );
}
