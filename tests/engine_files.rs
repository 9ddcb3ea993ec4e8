//! Files in and out of bare-guest sandboxes through the engine: chunk
//! boundaries, a multi-MiB round trip, every size limit as a typed error,
//! isolation between forks, and guests that answer reads out of protocol.

mod support;

use std::time::Duration;

use support::*;
use zeroboot::engine::{Branching, CancelToken, Engine, EngineConfig, EngineError};
use zeroboot_proto::{MAX_PAYLOAD, WriteFile};

const PATH: &str = "/data/file.bin";

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ salt)
        .collect()
}

fn write(e: &Engine, sb: &str, path: &str, data: Vec<u8>) -> Result<(), EngineError> {
    e.write_file(sb, path, data, 0o644, None, &CancelToken::new())
}

fn read(e: &Engine, sb: &str, path: &str, max: usize) -> Result<Vec<u8>, EngineError> {
    e.read_file(sb, path, max, None, &CancelToken::new())
}

#[test]
fn files_round_trip_at_every_chunk_boundary() {
    if !kvm_or_skip("files_round_trip_at_every_chunk_boundary") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    // What one WriteFile frame carries for this path, and one FileData frame.
    let write_chunk = MAX_PAYLOAD - WriteFile::OVERHEAD - PATH.len();
    let read_chunk = MAX_PAYLOAD;
    for (i, len) in [
        0,
        1,
        write_chunk,
        write_chunk + 1,
        read_chunk,
        read_chunk + 1,
        3 * read_chunk,
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(len, i as u8);
        write(&e, &sb, PATH, data.clone()).unwrap();
        let back = read(&e, &sb, PATH, 16 << 20).unwrap();
        assert!(back == data, "{len} bytes came back different");
    }
    assert_eq!(stdout(&e, &sb, &["echo", "still", "fine"]), "still fine\n");
}

#[test]
fn five_mib_round_trip_costs_one_exit_per_chunk() {
    if !kvm_or_skip("five_mib_round_trip_costs_one_exit_per_chunk") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    stdout(&e, &sb, &["echo"]);
    let data = pattern(5 << 20, 7);
    let exits = e.stats(&sb).unwrap().exits;
    write(&e, &sb, PATH, data.clone()).unwrap();
    let chunks = data
        .len()
        .div_ceil(MAX_PAYLOAD - WriteFile::OVERHEAD - PATH.len()) as u64;
    let used = e.stats(&sb).unwrap().exits - exits;
    assert!(
        used >= chunks && used <= chunks + 2,
        "{used} exits for {chunks} chunks"
    );
    let exits = e.stats(&sb).unwrap().exits;
    let back = read(&e, &sb, PATH, data.len()).unwrap();
    let used = e.stats(&sb).unwrap().exits - exits;
    assert!(back == data, "5 MiB came back different");
    let chunks = (data.len() / MAX_PAYLOAD + 1) as u64;
    assert!(
        used >= chunks && used <= chunks + 2,
        "{used} exits for {chunks} chunks"
    );
}

#[test]
fn every_size_limit_is_a_typed_error_and_leaves_the_old_file() {
    if !kvm_or_skip("every_size_limit_is_a_typed_error_and_leaves_the_old_file") {
        return;
    }
    let (e, t) = engine_with(EngineConfig {
        max_file_bytes: 8 << 20,
        ..Default::default()
    });
    let sb = e.fork(&t).unwrap().sandbox;
    write(&e, &sb, PATH, b"old".to_vec()).unwrap();
    // The host's own limit: refused before the guest sees a byte.
    let err = write(&e, &sb, PATH, vec![0; (8 << 20) + 1]).unwrap_err();
    assert!(matches!(err, EngineError::FileTooLarge { .. }), "{err:?}");
    // The bare guest's 6 MiB store fills up partway through the transfer.
    let err = write(&e, &sb, PATH, vec![1; 7 << 20]).unwrap_err();
    assert!(
        matches!(&err, EngineError::FileTooLarge { detail } if detail.contains("store is full")),
        "{err:?}"
    );
    assert_eq!(read(&e, &sb, PATH, 100).unwrap(), b"old");
    // A read's own max_bytes, and one over the host's limit.
    write(&e, &sb, PATH, vec![2; 100_000]).unwrap();
    let err = read(&e, &sb, PATH, 99_999).unwrap_err();
    assert!(matches!(err, EngineError::FileTooLarge { .. }), "{err:?}");
    let err = read(&e, &sb, PATH, (8 << 20) + 1).unwrap_err();
    assert!(matches!(err, EngineError::InvalidRequest(_)), "{err:?}");
    // Refusals leave the sandbox usable. While a file is replaced the store
    // holds the old and the new one; afterwards only the new one.
    assert_eq!(read(&e, &sb, PATH, 100_000).unwrap().len(), 100_000);
    write(&e, &sb, PATH, vec![3; 3 << 20]).unwrap();
    write(&e, &sb, PATH, vec![4; 3 << 20]).unwrap();
    write(&e, &sb, "/other", vec![5; 3 << 20]).unwrap();
    let err = write(&e, &sb, "/third", vec![6]).unwrap_err();
    assert!(matches!(err, EngineError::FileTooLarge { .. }), "{err:?}");
    assert!(read(&e, &sb, PATH, 3 << 20).unwrap() == vec![4; 3 << 20]);
    assert!(read(&e, &sb, "/other", 3 << 20).unwrap() == vec![5; 3 << 20]);
    let err = read(&e, &sb, "/missing", 10).unwrap_err();
    assert!(matches!(err, EngineError::AgentFailed { .. }), "{err:?}");
    assert_eq!(stdout(&e, &sb, &["echo", "ok"]), "ok\n");
}

#[test]
fn forks_cannot_see_each_others_files_and_snapshots_carry_them() {
    if !kvm_or_skip("forks_cannot_see_each_others_files_and_snapshots_carry_them") {
        return;
    }
    let (e, t) = engine();
    let a = e.fork(&t).unwrap().sandbox;
    let b = e.fork(&t).unwrap().sandbox;
    write(&e, &a, "/a", pattern(200_000, 1)).unwrap();
    write(&e, &b, "/b", b"bee".to_vec()).unwrap();
    assert!(matches!(
        read(&e, &b, "/a", 1 << 20),
        Err(EngineError::AgentFailed { .. })
    ));
    assert!(matches!(
        read(&e, &a, "/b", 1 << 20),
        Err(EngineError::AgentFailed { .. })
    ));
    // A branch of `a` starts with a's files; what either writes afterwards stays its own.
    let branch = e
        .snapshot_sandbox(&a, Branching::Layer, &CancelToken::new())
        .unwrap()
        .template;
    let c = e.fork(&branch).unwrap().sandbox;
    assert_eq!(read(&e, &c, "/a", 1 << 20).unwrap(), pattern(200_000, 1));
    write(&e, &c, "/a", b"changed in c".to_vec()).unwrap();
    write(&e, &a, "/only-a", b"x".to_vec()).unwrap();
    assert_eq!(read(&e, &a, "/a", 1 << 20).unwrap(), pattern(200_000, 1));
    assert!(read(&e, &c, "/only-a", 10).is_err());
    // The template itself never changes.
    let fresh = e.fork(&t).unwrap().sandbox;
    assert!(read(&e, &fresh, "/a", 1 << 20).is_err());
}

#[test]
fn reads_answered_out_of_protocol_are_typed_errors() {
    if !kvm_or_skip("reads_answered_out_of_protocol_are_typed_errors") {
        return;
    }
    let (e, t) = engine();
    for bad in ["long", "stall"] {
        let sb = e.fork(&t).unwrap().sandbox;
        write(&e, &sb, PATH, pattern(1000, 3)).unwrap();
        stdout(&e, &sb, &["badread", bad]);
        let err = read(&e, &sb, PATH, 1000).unwrap_err();
        assert!(
            matches!(err, EngineError::GuestProtocol { .. }),
            "{bad}: {err:?}"
        );
        assert!(matches!(
            run(&e, &sb, &["echo"]),
            Err(EngineError::SandboxUnusable { .. })
        ));
    }
    let other = e.fork(&t).unwrap().sandbox;
    assert_eq!(stdout(&e, &other, &["echo", "fine"]), "fine\n");
}

#[test]
fn one_deadline_and_one_cancel_cover_the_whole_transfer() {
    if !kvm_or_skip("one_deadline_and_one_cancel_cover_the_whole_transfer") {
        return;
    }
    let (e, t) = engine();
    let sb = e.fork(&t).unwrap().sandbox;
    let err = e
        .write_file(
            &sb,
            PATH,
            vec![5; 5 << 20],
            0o644,
            Some(Duration::from_millis(1)),
            &CancelToken::new(),
        )
        .unwrap_err();
    assert!(matches!(err, EngineError::ExecTimeout { .. }), "{err:?}");
    let sb = e.fork(&t).unwrap().sandbox;
    let cancel = CancelToken::new();
    cancel.cancel();
    let err = e
        .write_file(&sb, PATH, vec![5; 5 << 20], 0o644, None, &cancel)
        .unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err:?}");
}

#[test]
fn a_recycled_vm_keeps_no_file_of_its_previous_tenant() {
    if !kvm_or_skip("a_recycled_vm_keeps_no_file_of_its_previous_tenant") {
        return;
    }
    // One pooled VM, so each fork after a kill reuses the killed tenant's VM.
    let (e, t) = engine_with(EngineConfig {
        pool_size: 1,
        ..Default::default()
    });
    // Small tenants are reset in place, large ones by mapping the template again.
    for (round, len) in [10, 5 << 20, 10, 5 << 20].into_iter().enumerate() {
        let sb = e.fork(&t).unwrap().sandbox;
        let err = read(&e, &sb, PATH, 16 << 20).unwrap_err();
        assert!(
            matches!(err, EngineError::AgentFailed { .. }),
            "round {round}: {err:?}"
        );
        write(&e, &sb, PATH, pattern(len, round as u8)).unwrap();
        e.kill(&sb).unwrap();
    }
}
