//! An idle sandbox gives back the private pages that hold what its template
//! holds, and nothing it changed: not its own writes, not what a branch it
//! was forked from shows.

mod support;

use std::time::{Duration, Instant};

use support::*;
use zeroboot::engine::{Engine, EngineConfig};

const TEMPLATE_SCRATCH: &str = "0x7e57000000000001";

fn pages(e: &Engine, sb: &str) -> u64 {
    e.stats(sb).unwrap().dirty_pages
}

/// Waits until the sandbox's private page count drops below `than`, or 5 s.
fn settles_below(e: &Engine, sb: &str, than: u64) -> u64 {
    let t = Instant::now();
    loop {
        let now = pages(e, sb);
        if now < than || t.elapsed() > Duration::from_secs(5) {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_idle_sandbox_gives_back_what_it_left_unchanged_and_keeps_its_writes() {
    if !kvm_or_skip("an_idle_sandbox_gives_back_what_it_left_unchanged_and_keeps_its_writes") {
        return;
    }
    let (e, t) = engine();
    let sb = fork(&e, &t);
    stdout(&e, &sb, &["poke", "0x1234"]);
    stdout(&e, &sb, &["dirty", "100"]);
    let dirty_addr = format!("{:#x}", 8u64 << 20);
    let written = stdout(&e, &sb, &["peek", &dirty_addr]);
    assert_ne!(written, "0x0000000000000000\n");
    // Back to the template's value: that page may now equal the template's.
    stdout(&e, &sb, &["poke", TEMPLATE_SCRATCH]);
    let busy = pages(&e, &sb);
    let idle = settles_below(&e, &sb, busy);
    assert!(
        idle < busy,
        "nothing given back: {busy} private pages before, {idle} after"
    );
    assert!(
        idle >= 100,
        "pages written with data were given back: {idle} left"
    );
    assert_eq!(stdout(&e, &sb, &["peek", &dirty_addr]), written);
    assert_eq!(stdout(&e, &sb, &["peek"]), format!("{TEMPLATE_SCRATCH}\n"));
    // The trim left the sandbox whole: it runs on and branches.
    stdout(&e, &sb, &["poke", "0x1234"]);
    let snap = branch(&e, &sb).template;
    let child = fork(&e, &snap);
    assert_eq!(stdout(&e, &child, &["peek"]), "0x0000000000001234\n");
    assert_eq!(stdout(&e, &child, &["peek", &dirty_addr]), written);
}

#[test]
fn a_page_written_back_to_the_base_keeps_a_branch_forks_value() {
    if !kvm_or_skip("a_page_written_back_to_the_base_keeps_a_branch_forks_value") {
        return;
    }
    let (e, t) = engine();
    let a = fork(&e, &t);
    stdout(&e, &a, &["poke", "0x1234"]);
    let b = branch(&e, &a).template;
    // A fork of the branch writes the template's value back: its page may
    // equal the base again, but the branch shows 0x1234 there, so the page
    // must stay for a branch of this fork to show the template's value.
    let c = fork(&e, &b);
    stdout(&e, &c, &["poke", TEMPLATE_SCRATCH]);
    e.trim(&c).unwrap();
    assert_eq!(stdout(&e, &c, &["peek"]), format!("{TEMPLATE_SCRATCH}\n"));
    let d = branch(&e, &c).template;
    let f = fork(&e, &d);
    assert_eq!(stdout(&e, &f, &["peek"]), format!("{TEMPLATE_SCRATCH}\n"));
}

#[test]
fn without_idle_trims_nothing_is_given_back() {
    if !kvm_or_skip("without_idle_trims_nothing_is_given_back") {
        return;
    }
    let (e, t) = engine_with(EngineConfig {
        trim_idle_ms: None,
        ..Default::default()
    });
    let sb = fork(&e, &t);
    stdout(&e, &sb, &["poke", "0x1234"]);
    stdout(&e, &sb, &["poke", TEMPLATE_SCRATCH]);
    let busy = pages(&e, &sb);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pages(&e, &sb), busy);
    assert!(
        e.trim(&sb).unwrap() > 0,
        "an explicit trim gives pages back"
    );
    assert!(pages(&e, &sb) < busy);
}
