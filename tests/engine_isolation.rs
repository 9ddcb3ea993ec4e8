//! Copy-on-write isolation: forks never see each other's writes, recycled VMs
//! carry nothing over from their previous tenant, and the template never changes.

mod support;

use support::*;
use zeroboot::engine::{Branching, CancelToken, EngineConfig};

const TEMPLATE_SCRATCH: &str = "0x7e57000000000001\n";

#[test]
fn forks_do_not_see_each_others_writes() {
    if !kvm_or_skip("forks_do_not_see_each_others_writes") {
        return;
    }
    let (e, t) = engine();
    let a = e.fork(&t).unwrap().sandbox;
    let b = e.fork(&t).unwrap().sandbox;
    assert_eq!(stdout(&e, &a, &["peek"]), TEMPLATE_SCRATCH);
    stdout(&e, &a, &["poke", "0x1234"]);
    assert_eq!(stdout(&e, &a, &["peek"]), "0x0000000000001234\n");
    assert_eq!(stdout(&e, &b, &["peek"]), TEMPLATE_SCRATCH);
    let c = e.fork(&t).unwrap().sandbox;
    assert_eq!(stdout(&e, &c, &["peek"]), TEMPLATE_SCRATCH);
    assert_eq!(stdout(&e, &a, &["peek"]), "0x0000000000001234\n");
}

#[test]
fn recycled_vms_keep_nothing_from_the_previous_tenant() {
    if !kvm_or_skip("recycled_vms_keep_nothing_from_the_previous_tenant") {
        return;
    }
    // One pooled VM, so the next fork after a kill reuses the killed VM.
    let (e, t) = engine_with(EngineConfig {
        pool_size: 1,
        ..Default::default()
    });
    // Small tenants are reset in place, large ones by mapping the template again.
    for round in 0..20 {
        let pages = if round % 2 == 0 { "64" } else { "1000" };
        let sb = e.fork(&t).unwrap().sandbox;
        assert_eq!(
            stdout(&e, &sb, &["peek"]),
            TEMPLATE_SCRATCH,
            "round {round}"
        );
        let dirty_addr = format!("{:#x}", 8u64 << 20);
        assert_eq!(
            stdout(&e, &sb, &["peek", &dirty_addr]),
            "0x0000000000000000\n",
            "round {round}"
        );
        stdout(&e, &sb, &["poke", "0xdead"]);
        stdout(&e, &sb, &["dirty", pages]);
        assert!(e.stats(&sb).unwrap().dirty_pages >= pages.parse().unwrap());
        e.kill(&sb).unwrap();
    }
}

#[test]
fn dirty_pages_are_private_and_counted() {
    if !kvm_or_skip("dirty_pages_are_private_and_counted") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    stdout(&e, &sb, &["echo"]);
    let idle = e.stats(&sb).unwrap().dirty_pages;
    stdout(&e, &sb, &["dirty", "100"]);
    let dirty = e.stats(&sb).unwrap().dirty_pages;
    assert!(dirty >= idle + 100, "idle {idle} dirty {dirty}");
    let other = e.fork(&t).unwrap().sandbox;
    stdout(&e, &other, &["echo"]);
    assert!(e.stats(&other).unwrap().dirty_pages < idle + 10);
}

#[test]
fn saved_template_loads_and_forks_identically() {
    if !kvm_or_skip("saved_template_loads_and_forks_identically") {
        return;
    }
    let (e, t) = engine();
    let path = std::env::temp_dir().join(format!("zeroboot-test-{}.zbt", std::process::id()));
    let bytes = e.save_template(&t, &path, &CancelToken::new()).unwrap();
    // The body is guest memory page for page, with holes for untouched pages.
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
    let on_disk = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap()) * 512;
    assert!(
        bytes >= 32 << 20 && on_disk < 8 << 20,
        "only touched pages take disk space: {on_disk} of {bytes} bytes"
    );
    let loaded = e.load_file(&path, &CancelToken::new()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let sb = e.fork(&loaded.template).unwrap().sandbox;
    assert_eq!(stdout(&e, &sb, &["echo", "from", "file"]), "from file\n");
    assert_eq!(stdout(&e, &sb, &["peek"]), TEMPLATE_SCRATCH);
    let garbage = std::env::temp_dir().join(format!("zeroboot-bad-{}.zbt", std::process::id()));
    std::fs::write(&garbage, b"not a template").unwrap();
    assert!(matches!(
        e.load_file(&garbage, &CancelToken::new()),
        Err(zeroboot::engine::EngineError::TemplateFile { .. })
    ));
    std::fs::remove_file(&garbage).unwrap();
}

#[test]
fn a_live_sandbox_branches_into_a_template() {
    if !kvm_or_skip("a_live_sandbox_branches_into_a_template") {
        return;
    }
    let (e, t) = engine();
    let parent = e.fork(&t).unwrap().sandbox;
    stdout(&e, &parent, &["poke", "0xb0a7"]);
    let branch = e
        .snapshot_sandbox(&parent, Branching::Layer, &CancelToken::new())
        .unwrap();
    assert!(branch.source.contains(&parent));
    // The parent carries on, and its later writes do not reach the branch.
    assert_eq!(stdout(&e, &parent, &["peek"]), "0x000000000000b0a7\n");
    stdout(&e, &parent, &["poke", "0x1"]);
    for _ in 0..3 {
        let child = e.fork(&branch.template).unwrap().sandbox;
        assert_eq!(stdout(&e, &child, &["peek"]), "0x000000000000b0a7\n");
        assert_eq!(stdout(&e, &child, &["echo", "branched"]), "branched\n");
        stdout(&e, &child, &["poke", "0x2"]);
    }
    let a = e.fork(&branch.template).unwrap().sandbox;
    let b = e.fork(&branch.template).unwrap().sandbox;
    assert_ne!(
        stdout(&e, &a, &["random", "16"]),
        stdout(&e, &b, &["random", "16"])
    );
    // The original template is untouched.
    let fresh = e.fork(&t).unwrap().sandbox;
    assert_eq!(stdout(&e, &fresh, &["peek"]), TEMPLATE_SCRATCH);
}
