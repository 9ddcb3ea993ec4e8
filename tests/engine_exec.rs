//! Exec semantics on the bare guest: real exit codes, separate stderr, stdin,
//! env, cwd, output caps, per-fork entropy and clock.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use support::*;
use zeroboot::engine::{CancelToken, ExecRequest, OutputStream};

#[test]
fn stdout_stderr_and_exit_codes_are_real() {
    if !kvm_or_skip("stdout_stderr_and_exit_codes_are_real") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    let r = run(&e, &sb, &["echo", "hello", "world"]).unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"hello world\n"[..], &b""[..], Some(0))
    );
    let r = run(&e, &sb, &["stderr", "oops"]).unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice()),
        (&b""[..], &b"oops\n"[..])
    );
    assert_eq!(run(&e, &sb, &["exit", "42"]).unwrap().exit_code, Some(42));
    let r = run(&e, &sb, &["no-such-command"]).unwrap();
    assert_eq!(r.exit_code, Some(127));
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown command"));
}

#[test]
fn stdin_env_and_cwd_reach_the_guest() {
    if !kvm_or_skip("stdin_env_and_cwd_reach_the_guest") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    let exec = |r: ExecRequest| exec(&e, &sb, &r).unwrap();
    let r = exec(ExecRequest {
        stdin: b"piped input".to_vec(),
        ..req(&["cat"])
    });
    assert_eq!(r.stdout, b"piped input");
    let r = exec(ExecRequest {
        env: vec![("A".into(), "1".into()), ("B".into(), "two".into())],
        ..req(&["env"])
    });
    assert_eq!(r.stdout, b"A=1\nB=two\n");
    let r = exec(ExecRequest {
        cwd: "/work".into(),
        ..req(&["pwd"])
    });
    assert_eq!(r.stdout, b"/work\n");
}

#[test]
fn output_streams_in_chunks_and_is_capped() {
    if !kvm_or_skip("output_streams_in_chunks_and_is_capped") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    let mut chunks = 0;
    let mut streamed = 0;
    let r = e
        .exec(
            &sb,
            &req(&["flood", "300000"]),
            &CancelToken::new(),
            &mut |s, d| {
                assert_eq!(s, OutputStream::Stdout);
                chunks += 1;
                streamed += d.len();
            },
        )
        .unwrap();
    assert_eq!(
        (r.stdout.len(), streamed, r.truncated),
        (300_000, 300_000, false)
    );
    assert!(
        chunks >= 5,
        "64 KiB mailbox means several chunks, got {chunks}"
    );
    let capped = ExecRequest {
        output_cap: Some(1000),
        ..req(&["flood", "10000000"])
    };
    let r = exec(&e, &sb, &capped).unwrap();
    assert_eq!(
        (r.stdout.len(), r.truncated, r.exit_code),
        (1000, true, Some(0))
    );
    // The sandbox is still healthy after a capped flood.
    assert_eq!(stdout(&e, &sb, &["echo", "after"]), "after\n");
}

#[test]
fn every_fork_gets_fresh_entropy() {
    if !kvm_or_skip("every_fork_gets_fresh_entropy") {
        return;
    }
    let (e, t) = engine();
    let draws: Vec<String> = (0..8)
        .map(|_| {
            let sb = e.fork(&t).unwrap().sandbox;
            let out = stdout(&e, &sb, &["random", "16"]);
            e.kill(&sb).unwrap();
            out
        })
        .collect();
    for (i, a) in draws.iter().enumerate() {
        assert_eq!(a.trim().len(), 32, "16 bytes in hex");
        for b in &draws[i + 1..] {
            assert_ne!(a, b, "two forks drew the same randomness");
        }
    }
}

#[test]
fn guest_clock_is_the_hosts_now() {
    if !kvm_or_skip("guest_clock_is_the_hosts_now") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    let guest: u128 = stdout(&e, &sb, &["clock"]).trim().parse().unwrap();
    let host = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(
        host >= guest && host - guest < 1_000_000_000,
        "guest {guest} host {host}"
    );
}

#[test]
fn stray_io_reads_all_ones_and_is_counted() {
    if !kvm_or_skip("stray_io_reads_all_ones_and_is_counted") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    let out = stdout(&e, &sb, &["badio"]);
    assert_eq!(out, "port=0x00000000000000ff mmio=0x00000000ffffffff\n");
    let s = e.stats(&sb).unwrap();
    assert_eq!((s.stray_pio, s.stray_mmio), (2, 2));
    assert!(s.exits >= 5 && s.execs == 1);
}
