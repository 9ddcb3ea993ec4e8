//! Hostile and failing guests: each gets a typed error, only its own sandbox
//! is affected, and the engine keeps serving.

mod support;

use std::time::{Duration, Instant};

use support::*;
use zeroboot::engine::{CancelToken, EngineConfig, EngineError, SandboxState, Unload};

#[test]
fn spinning_guest_is_stopped_on_time_and_others_keep_working() {
    if !kvm_or_skip("spinning_guest_is_stopped_on_time_and_others_keep_working") {
        return;
    }
    let (e, t) = engine();
    let spinner = e.fork(&t).unwrap().sandbox;
    let other = e.fork(&t).unwrap().sandbox;
    let start = Instant::now();
    let err = exec(&e, &spinner, &timeout(300, &["spin"])).unwrap_err();
    let took = start.elapsed();
    // The bare guest ignores the in-guest deadline: the host stops it after
    // its grace.
    let host = 300 + e.config().exec_host_grace_ms;
    assert!(
        matches!(err, EngineError::ExecTimeout { timeout_ms } if timeout_ms == host),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(host) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    // Documented: after a host deadline the sandbox is unusable, only kill works.
    let again = run(&e, &spinner, &["echo", "x"]).unwrap_err();
    assert!(
        matches!(again, EngineError::SandboxUnusable { .. }),
        "{again:?}"
    );
    assert_eq!(stdout(&e, &other, &["echo", "fine"]), "fine\n");
    e.kill(&spinner).unwrap();
    let fresh = e.fork(&t).unwrap().sandbox;
    assert_eq!(stdout(&e, &fresh, &["echo", "fresh"]), "fresh\n");
}

#[test]
fn crash_is_a_typed_error_with_the_exit_reason() {
    if !kvm_or_skip("crash_is_a_typed_error_with_the_exit_reason") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    match run(&e, &sb, &["crash"]).unwrap_err() {
        EngineError::GuestCrashed { reason } => assert!(reason.contains("rip="), "{reason}"),
        other => panic!("expected a crash, got {other:?}"),
    }
    assert!(matches!(
        run(&e, &sb, &["echo"]).unwrap_err(),
        EngineError::SandboxUnusable { .. }
    ));
    e.kill(&sb).unwrap();
    let sb = e.fork(&t).unwrap().sandbox;
    assert_eq!(stdout(&e, &sb, &["echo", "ok"]), "ok\n");
}

#[test]
fn malformed_guest_frame_is_a_protocol_violation() {
    if !kvm_or_skip("malformed_guest_frame_is_a_protocol_violation") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    let err = run(&e, &sb, &["garbage"]).unwrap_err();
    assert!(matches!(err, EngineError::GuestProtocol { .. }), "{err:?}");
}

#[test]
fn second_exec_on_a_busy_sandbox_is_refused() {
    if !kvm_or_skip("second_exec_on_a_busy_sandbox_is_refused") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    std::thread::scope(|s| {
        let spin = s.spawn(|| exec(&e, &sb, &timeout(1500, &["spin"])));
        while e
            .list_sandboxes()
            .iter()
            .all(|i| i.state != SandboxState::Busy)
        {
            std::thread::yield_now();
        }
        let err = run(&e, &sb, &["echo"]).unwrap_err();
        assert!(matches!(err, EngineError::SandboxBusy(_)), "{err:?}");
        assert!(matches!(
            spin.join().unwrap(),
            Err(EngineError::ExecTimeout { .. })
        ));
    });
}

#[test]
fn cancel_stops_a_running_exec_at_once() {
    if !kvm_or_skip("cancel_stops_a_running_exec_at_once") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    let token = CancelToken::new();
    let spin = timeout(30_000, &["spin"]);
    let start = Instant::now();
    std::thread::scope(|s| {
        let h = s.spawn(|| e.exec(&sb, &spin, &token, &mut |_, _| {}));
        std::thread::sleep(Duration::from_millis(100));
        token.cancel();
        assert!(matches!(h.join().unwrap(), Err(EngineError::Cancelled)));
    });
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn kill_during_exec_ends_the_exec() {
    if !kvm_or_skip("kill_during_exec_ends_the_exec") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    std::thread::scope(|s| {
        let h = s.spawn(|| exec(&e, &sb, &timeout(30_000, &["spin"])));
        while e
            .list_sandboxes()
            .iter()
            .all(|i| i.state != SandboxState::Busy)
        {
            std::thread::yield_now();
        }
        e.kill(&sb).unwrap();
        assert!(matches!(
            h.join().unwrap(),
            Err(EngineError::SandboxNotFound(_))
        ));
    });
}

#[test]
fn unknown_ids_and_limits_are_typed_errors() {
    if !kvm_or_skip("unknown_ids_and_limits_are_typed_errors") {
        return;
    }
    let (e, t) = engine_with(EngineConfig {
        max_sandboxes: 2,
        ..Default::default()
    });
    assert!(matches!(
        e.fork("tpl-nope"),
        Err(EngineError::TemplateNotFound(_))
    ));
    assert!(matches!(
        run(&e, "sb-nope", &["echo"]),
        Err(EngineError::SandboxNotFound(_))
    ));
    assert!(matches!(
        e.kill("sb-nope"),
        Err(EngineError::SandboxNotFound(_))
    ));
    assert!(matches!(
        e.load_builtin("nope"),
        Err(EngineError::InvalidRequest(_))
    ));
    assert!(matches!(
        run(&e, "x", &[]),
        Err(EngineError::InvalidRequest(_))
    ));
    let a = e.fork(&t).unwrap().sandbox;
    let _b = e.fork(&t).unwrap().sandbox;
    assert!(matches!(e.fork(&t), Err(EngineError::ResourceLimit(_))));
    e.kill(&a).unwrap();
    assert!(matches!(
        run(&e, &a, &["echo"]),
        Err(EngineError::SandboxNotFound(_))
    ));
    assert!(matches!(
        e.unload_template(&t, Unload::IfUnused),
        Err(EngineError::TemplateInUse { sandboxes: 1, .. })
    ));
    assert_eq!(e.unload_template(&t, Unload::KillSandboxes).unwrap(), 1);
    assert!(e.list_sandboxes().is_empty() && e.list_templates().is_empty());
}
