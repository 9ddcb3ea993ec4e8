//! Branches (layered snapshots): isolation at every level of a tree, the
//! parent running on unchanged, chains that stay small, memory given back
//! when nothing needs it, and hostile guests contained inside a branch.

mod support;

use std::time::Duration;

use support::*;
use zeroboot::engine::{Branching, CancelToken, EngineError, Unload};

const TEMPLATE_SCRATCH: &str = "0x7e57000000000001\n";

fn hex(v: u64) -> String {
    format!("{v:#018x}\n")
}

#[test]
fn writes_never_cross_between_parents_siblings_and_their_forks() {
    if !kvm_or_skip("writes_never_cross_between_parents_siblings_and_their_forks") {
        return;
    }
    let (e, root) = engine();
    let a = fork(&e, &root);
    stdout(&e, &a, &["poke", "1"]);
    let b1 = branch(&e, &a);
    assert_eq!(b1.depth, 1);
    // The parent runs on; its later writes reach no branch.
    stdout(&e, &a, &["poke", "100"]);
    let (x, y) = (fork(&e, &b1.template), fork(&e, &b1.template));
    assert_eq!(stdout(&e, &x, &["peek"]), hex(1));
    stdout(&e, &x, &["poke", "2"]);
    assert_eq!(stdout(&e, &y, &["peek"]), hex(1), "a sibling fork");
    let b2 = branch(&e, &x);
    assert_eq!(b2.depth, 2);
    stdout(&e, &y, &["poke", "3"]);
    let b3 = branch(&e, &y);
    stdout(&e, &x, &["poke", "4"]);
    for _ in 0..3 {
        let (p, q, r) = (
            fork(&e, &b2.template),
            fork(&e, &b3.template),
            fork(&e, &b1.template),
        );
        assert_eq!(stdout(&e, &p, &["peek"]), hex(2), "depth 2, left");
        assert_eq!(stdout(&e, &q, &["peek"]), hex(3), "depth 2, right");
        assert_eq!(stdout(&e, &r, &["peek"]), hex(1), "depth 1");
        stdout(&e, &p, &["poke", "5"]);
        stdout(&e, &q, &["poke", "6"]);
        for sb in [p, q, r] {
            e.kill(&sb).unwrap();
        }
    }
    assert_eq!(stdout(&e, &a, &["peek"]), hex(100));
    assert_eq!(stdout(&e, &x, &["peek"]), hex(4));
    assert_eq!(stdout(&e, &y, &["peek"]), hex(3));
    let fresh = fork(&e, &root);
    assert_eq!(stdout(&e, &fresh, &["peek"]), TEMPLATE_SCRATCH);
    // Forks of a branch do not share entropy either.
    let (p, q) = (fork(&e, &b2.template), fork(&e, &b2.template));
    assert_ne!(
        stdout(&e, &p, &["random", "16"]),
        stdout(&e, &q, &["random", "16"])
    );
}

#[test]
fn a_branch_holds_only_what_its_sandbox_changed() {
    if !kvm_or_skip("a_branch_holds_only_what_its_sandbox_changed") {
        return;
    }
    let (e, root) = engine();
    let a = fork(&e, &root);
    stdout(&e, &a, &["dirty", "10"]);
    let b = branch(&e, &a);
    let pages = b.memory.own_bytes / 4096;
    assert!(
        (10..=24).contains(&pages),
        "10 dirtied pages and a few of the exec's: {pages}"
    );
    // Pages the guest wrote back to what the parent shows are not stored:
    // a fork of the branch that changes nothing branches into (almost) nothing.
    let c = fork(&e, &b.template);
    let again = branch(&e, &c);
    assert!(
        again.memory.own_bytes <= 8 * 4096,
        "an unchanged fork's branch holds {} bytes",
        again.memory.own_bytes
    );
    assert_eq!(again.memory.view_bytes, b.memory.view_bytes);
}

#[test]
fn a_chain_of_branches_stays_as_small_as_what_it_shows() {
    if !kvm_or_skip("a_chain_of_branches_stays_as_small_as_what_it_shows") {
        return;
    }
    let (e, root) = engine();
    let mut t = root;
    let mut sb = fork(&e, &t);
    for depth in 1..=40u64 {
        stdout(&e, &sb, &["poke", &depth.to_string()]);
        let b = branch(&e, &sb);
        assert_eq!(u64::from(b.depth), depth);
        // Every level rewrites the same few pages: what a level shows does
        // not grow with depth, and stores shadowed below are let go.
        assert!(b.memory.view_bytes <= 32 * 4096, "{depth}: {:?}", b.memory);
        assert!(
            b.memory.held_bytes <= 3 * b.memory.view_bytes + 256 * 4096,
            "{depth}: {:?}",
            b.memory
        );
        if depth > 1 {
            e.unload_template(&t, Unload::KeepSandboxes).unwrap();
        }
        e.kill(&sb).unwrap();
        t = b.template;
        sb = fork(&e, &t);
        assert_eq!(stdout(&e, &sb, &["peek"]), hex(depth));
    }
}

#[test]
fn a_hostile_guest_in_a_branch_is_contained() {
    if !kvm_or_skip("a_hostile_guest_in_a_branch_is_contained") {
        return;
    }
    let (e, root) = engine();
    let a = fork(&e, &root);
    stdout(&e, &a, &["poke", "0x77"]);
    let b = branch(&e, &a).template;
    let spinner = fork(&e, &b);
    let started = std::time::Instant::now();
    assert!(matches!(
        exec(&e, &spinner, &timeout(300, &["spin"])),
        Err(EngineError::ExecTimeout { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
    let crasher = fork(&e, &b);
    assert!(matches!(
        run(&e, &crasher, &["crash"]),
        Err(EngineError::GuestCrashed { .. })
    ));
    let liar = fork(&e, &b);
    assert!(matches!(
        run(&e, &liar, &["garbage"]),
        Err(EngineError::GuestProtocol { .. })
    ));
    // Neither the branch, its other forks, nor its parent noticed.
    let ok = fork(&e, &b);
    assert_eq!(stdout(&e, &ok, &["peek"]), hex(0x77));
    assert_eq!(stdout(&e, &a, &["peek"]), hex(0x77));
    // A broken sandbox cannot be branched; it can only be killed.
    assert!(matches!(
        e.snapshot_sandbox(&spinner, Branching::Layer, &CancelToken::new()),
        Err(EngineError::SandboxUnusable { .. })
    ));
    for sb in [spinner, crasher, liar, ok] {
        e.kill(&sb).unwrap();
    }
    let again = fork(&e, &b);
    assert_eq!(stdout(&e, &again, &["peek"]), hex(0x77));
}

#[test]
fn a_full_copy_branch_is_a_template_of_its_own() {
    if !kvm_or_skip("a_full_copy_branch_is_a_template_of_its_own") {
        return;
    }
    let (e, root) = engine();
    let a = fork(&e, &root);
    stdout(&e, &a, &["poke", "9"]);
    let b = e
        .snapshot_sandbox(&a, Branching::FullCopy, &CancelToken::new())
        .unwrap();
    assert_eq!(b.depth, 0);
    assert_eq!(b.memory.view_bytes, 0);
    let c = fork(&e, &b.template);
    assert_eq!(stdout(&e, &c, &["peek"]), hex(9));
    let d = branch(&e, &c);
    let f = fork(&e, &d.template);
    assert_eq!(stdout(&e, &f, &["peek"]), hex(9));
}

#[test]
fn a_branch_keeps_a_few_vms_ready_and_gives_them_back() {
    if !kvm_or_skip("a_branch_keeps_a_few_vms_ready_and_gives_them_back") {
        return;
    }
    let (e, root) = engine();
    let a = fork(&e, &root);
    stdout(&e, &a, &["poke", "8"]);
    let b = branch(&e, &a).template;
    let info = |t: &str| {
        e.list_templates()
            .into_iter()
            .find(|i| i.template == t)
            .unwrap()
    };
    assert_eq!(info(&b).pooled, 0, "nothing is taken before the first fork");
    // Let the root's pool fill: the branch's ready VMs come from it.
    std::thread::sleep(Duration::from_millis(300));
    let first = fork(&e, &b);
    assert_eq!(stdout(&e, &first, &["peek"]), hex(8));
    // The first fork started ready VMs for the next ones.
    std::thread::sleep(Duration::from_millis(200));
    assert!(info(&b).pooled > 0);
    let next = fork(&e, &b);
    assert_eq!(stdout(&e, &next, &["peek"]), hex(8));
    for sb in [first, next, a] {
        e.kill(&sb).unwrap();
    }
    e.unload_template(&b, Unload::IfUnused).unwrap();
    // Its ready VMs went back to the root's pool, reset to the root.
    let mut pooled = 0;
    for _ in 0..500 {
        pooled = info(&root).pooled;
        if pooled == e.config().pool_size {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pooled, e.config().pool_size);
    for _ in 0..e.config().pool_size + 2 {
        let sb = fork(&e, &root);
        assert_eq!(stdout(&e, &sb, &["peek"]), TEMPLATE_SCRATCH);
    }
    let fresh = fork(&e, &root);
    assert_eq!(stdout(&e, &fresh, &["peek"]), TEMPLATE_SCRATCH);
}

#[test]
fn a_vm_recycled_into_a_branch_keeps_nothing_of_its_previous_tenant() {
    if !kvm_or_skip("a_vm_recycled_into_a_branch_keeps_nothing_of_its_previous_tenant") {
        return;
    }
    let (e, root) = engine();
    let a = fork(&e, &root);
    stdout(&e, &a, &["poke", "0xb1"]);
    let b = branch(&e, &a).template;
    let dirty_addr = format!("{:#x}", 8u64 << 20);
    // Small tenants are reset in place, large ones by mapping the base again;
    // either way the next fork of the branch sees the branch, nothing else.
    for round in 0..12 {
        let pages = if round % 2 == 0 { "64" } else { "1000" };
        let sb = fork(&e, &b);
        assert_eq!(stdout(&e, &sb, &["peek"]), hex(0xb1), "round {round}");
        assert_eq!(
            stdout(&e, &sb, &["peek", &dirty_addr]),
            hex(0),
            "round {round}"
        );
        stdout(&e, &sb, &["poke", "0xdead"]);
        stdout(&e, &sb, &["dirty", pages]);
        e.kill(&sb).unwrap();
    }
}

/// A fork of a branch that never ran still holds the branch. When its VM goes
/// back to the root's pool (a branch keeps only a few ready) it must be reset
/// to the root like any other, though a never-ran sandbox going back to its
/// own layer skips the reset.
#[test]
fn a_branch_fork_that_never_ran_is_reset_before_the_root_pool_takes_it() {
    if !kvm_or_skip("a_branch_fork_that_never_ran_is_reset_before_the_root_pool_takes_it") {
        return;
    }
    let (e, root) = engine();
    let fresh = fork(&e, &root);
    let clean = stdout(&e, &fresh, &["peek"]);
    e.kill(&fresh).unwrap();
    let a = fork(&e, &root);
    stdout(&e, &a, &["poke", "0x77"]);
    let b = branch(&e, &a).template;
    e.kill(&a).unwrap();
    let n = e.config().pool_size * 2;
    let idle: Vec<String> = (0..n).map(|_| fork(&e, &b)).collect();
    for sb in &idle {
        e.kill(sb).unwrap();
    }
    // Every VM the root's pool holds now, and more.
    let forks: Vec<String> = (0..n).map(|_| fork(&e, &root)).collect();
    for sb in &forks {
        assert_eq!(
            stdout(&e, sb, &["peek"]),
            clean,
            "a fork of the root saw a branch's memory"
        );
    }
    let keep = fork(&e, &b);
    assert_eq!(stdout(&e, &keep, &["peek"]), hex(0x77));
}
