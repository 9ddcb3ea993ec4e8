//! Template files are input: every way a file can be wrong gives a typed
//! error in bounded time, and saving never writes over or through anything.
//! The files here are made by `template.save` and then altered the way an
//! attacker (or a bad disk) would, with the checksum recomputed as the format
//! documents it (src/engine/file.rs), so each check is reached on its own.

mod support;
#[path = "common/template_file.rs"]
mod template_file;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use template_file::{Dir, Parts};
use zeroboot::engine::{CancelToken, Engine, EngineConfig, EngineError};

/// An engine with the bare template and a pool of one: these tests load many
/// templates, and each loaded template fills a pool.
fn small_engine() -> (Engine, String) {
    engine_with(EngineConfig {
        pool_size: 1,
        ..Default::default()
    })
}

fn saved(e: &Engine, t: &str, dir: &Dir) -> PathBuf {
    let path = dir.0.join("t.zbt");
    e.save_template(t, &path, &CancelToken::new()).unwrap();
    path
}

fn load(e: &Engine, path: &Path) -> Result<String, EngineError> {
    e.load_file(path, &CancelToken::new()).map(|i| i.template)
}

fn file_error(r: Result<String, EngineError>) -> String {
    match r {
        Err(EngineError::TemplateFile { detail, .. }) => detail,
        other => panic!("expected a template file error, got {other:?}"),
    }
}

#[test]
fn a_flipped_bit_anywhere_is_caught_by_the_checksum() {
    if !kvm_or_skip("a_flipped_bit_anywhere_is_caught_by_the_checksum") {
        return;
    }
    let (e, t) = small_engine();
    let dir = Dir::new("checksum");
    let path = saved(&e, &t, &dir);
    let p = Parts::read(&path);
    let pristine = std::fs::read(&path).unwrap();
    // In a data page of the body, in a hole of the body, in the header.
    for at in [p.body_offset + 0x10_0000 + 5, p.body_offset + 0x80_0000, 70] {
        let mut b = pristine.clone();
        b[at as usize] ^= 0x10;
        std::fs::write(&path, &b).unwrap();
        let detail = file_error(load(&e, &path));
        assert!(detail.contains("checksum"), "byte {at}: {detail}");
    }
    std::fs::write(&path, &pristine).unwrap();
    load(&e, &path).unwrap();
}

#[test]
fn every_header_field_is_range_checked() {
    if !kvm_or_skip("every_header_field_is_range_checked") {
        return;
    }
    let (e, t) = small_engine();
    let dir = Dir::new("ranges");
    let path = saved(&e, &t, &dir);
    let pristine = std::fs::read(&path).unwrap();
    type Edit = Box<dyn Fn(&mut Parts)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "a mailbox count of 2^64-1",
            Box::new(|p| p.header["mailbox"]["count"] = Value::from(u64::MAX)),
            "mailbox",
        ),
        (
            "a mailbox page beyond memory",
            Box::new(|p| p.header["mailbox"]["pages"][0] = Value::from(1u64 << 40)),
            "mailbox",
        ),
        (
            "short regs",
            Box::new(|p| {
                p.vcpu_bytes("regs").truncate(16);
            }),
            "bytes",
        ),
        (
            "long sregs",
            Box::new(|p| p.vcpu_bytes("sregs").push(Value::from(0))),
            "bytes",
        ),
        (
            "an MSR this host does not save",
            Box::new(|p| {
                let msr = &mut p.vcpu_bytes("msrs")[0];
                // kvm_msr_entry: index (u32), reserved (u32), data (u64).
                msr.as_array_mut().unwrap()[..4]
                    .clone_from_slice(&[0xef, 0xbe, 0xad, 0xde].map(Value::from));
            }),
            "MSR",
        ),
        (
            "a missing irqchip",
            Box::new(|p| {
                p.header["state"]["vm"]["irqchips"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
            "irqchips",
        ),
    ];
    for (what, edit, expect) in cases {
        std::fs::write(&path, &pristine).unwrap();
        let mut p = Parts::read(&path);
        edit(&mut p);
        p.write();
        let detail = file_error(load(&e, &path));
        assert!(detail.contains(expect), "{what}: {detail}");
    }
    // Sizes in the prefix: 64 GiB of memory claimed by a sparse file.
    std::fs::write(&path, &pristine).unwrap();
    let mut p = Parts::read(&path);
    p.memory = 64 << 30;
    p.write();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(p.body_offset + (64 << 30))
        .unwrap();
    let started = Instant::now();
    let detail = file_error(load(&e, &path));
    assert!(detail.contains("guest memory"), "{detail}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // A file cut short.
    std::fs::write(&path, &pristine[..pristine.len() - 4096]).unwrap();
    assert!(file_error(load(&e, &path)).contains("bytes long"));
}

#[test]
fn a_cpu_this_host_is_not_is_refused_before_anything_runs() {
    if !kvm_or_skip("a_cpu_this_host_is_not_is_refused_before_anything_runs") {
        return;
    }
    let (e, t) = small_engine();
    let dir = Dir::new("cpu");
    let path = saved(&e, &t, &dir);
    let pristine = std::fs::read(&path).unwrap();
    // kvm_cpuid_entry2: function, index, flags, eax, ebx, ecx, edx (u32 each).
    let leaf = |p: &mut Parts, function: u32| -> usize {
        p.vcpu_bytes("cpuid")
            .iter()
            .position(|e| {
                let b: Vec<u8> = e
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u8)
                    .collect();
                u32::from_le_bytes(b[..4].try_into().unwrap()) == function
                    && u32::from_le_bytes(b[4..8].try_into().unwrap()) == 0
            })
            .unwrap()
    };
    // Another vendor.
    let mut p = Parts::read(&path);
    let i = leaf(&mut p, 0);
    p.vcpu_bytes("cpuid")[i].as_array_mut().unwrap()[16..28]
        .clone_from_slice(&b"Hygon!CPU!!!".map(Value::from));
    p.write();
    match load(&e, &path) {
        Err(EngineError::TemplateIncompatible { detail, .. }) => {
            assert!(
                detail.contains("Hygo") && detail.contains("this host is"),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A feature this host lacks: every bit of leaf 7 EBX set.
    std::fs::write(&path, &pristine).unwrap();
    let mut p = Parts::read(&path);
    let i = leaf(&mut p, 7);
    p.vcpu_bytes("cpuid")[i].as_array_mut().unwrap()[16..20].fill(Value::from(0xff));
    p.write();
    match load(&e, &path) {
        Err(EngineError::TemplateIncompatible { detail, .. }) => {
            assert!(detail.contains("leaf 0x7.0 Ebx"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_guest_that_never_answers_is_rejected_in_bounded_time() {
    if !kvm_or_skip("a_guest_that_never_answers_is_rejected_in_bounded_time") {
        return;
    }
    let (e, t) = engine_with(EngineConfig {
        default_timeout_ms: 1000,
        pool_size: 1,
        ..Default::default()
    });
    let dir = Dir::new("unresponsive");
    let path = saved(&e, &t, &dir);
    let pristine = std::fs::read(&path).unwrap();
    // RIP at a jump-to-self (EB FE) in a page nothing else uses.
    let spin_at: u64 = 0x8_0000;
    let mut p = Parts::read(&path);
    p.poke_body(spin_at, &[0xeb, 0xfe]);
    p.vcpu_bytes("regs")[128..136].clone_from_slice(&spin_at.to_le_bytes().map(Value::from));
    p.write();
    let started = Instant::now();
    match load(&e, &path) {
        Err(EngineError::TemplateUnresponsive { detail }) => {
            assert!(
                detail.contains("did not answer") && detail.contains("0x80000"),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "{took:?}");
    // Cancelled from another thread: it stops at once, not at the deadline.
    let (slow, _) = engine_with(EngineConfig {
        default_timeout_ms: 60_000,
        pool_size: 1,
        ..Default::default()
    });
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        c.cancel();
    });
    let started = Instant::now();
    assert!(matches!(
        slow.load_file(&path, &cancel),
        Err(EngineError::Cancelled)
    ));
    // Far from the 60 s deadline (even in the emulated lane).
    assert!(started.elapsed() < Duration::from_secs(15));
    canceller.join().unwrap();
    // The same file corrupt besides: its checksum, checked while the probe
    // runs, fails and stops the spinning probe long before its deadline.
    let mut b = std::fs::read(&path).unwrap();
    b[(p.body_offset + 0x10_0000 + 5) as usize] ^= 0x10;
    std::fs::write(&path, &b).unwrap();
    let started = Instant::now();
    let detail = file_error(
        slow.load_file(&path, &CancelToken::new())
            .map(|i| i.template),
    );
    assert!(detail.contains("checksum"), "{detail}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // Zero special registers: KVM refuses them, or the guest dies at once.
    std::fs::write(&path, &pristine).unwrap();
    let mut p = Parts::read(&path);
    p.vcpu_bytes("sregs").fill(Value::from(0));
    p.write();
    let started = Instant::now();
    assert!(
        matches!(
            load(&e, &path),
            Err(EngineError::TemplateUnresponsive { .. })
        ),
        "zero sregs"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    // Nothing of them was registered, and the worker is fine.
    assert_eq!(e.list_templates().len(), 1);
    let sb = e.fork(&t).unwrap().sandbox;
    assert_eq!(stdout(&e, &sb, &["echo", "fine"]), "fine\n");
}

#[test]
fn only_regular_files_holding_data_are_read() {
    if !kvm_or_skip("only_regular_files_holding_data_are_read") {
        return;
    }
    let (e, _) = small_engine();
    let dir = Dir::new("kinds");
    let fifo = dir.0.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path string and mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, expect) in [
        (fifo.as_path(), "FIFO"),
        (Path::new("/dev/stdin"), ""),
        (Path::new("/dev/zero"), "device"),
        (Path::new("/proc/self/status"), "pseudo file system"),
        (
            Path::new("/sys/kernel/mm/transparent_hugepage/enabled"),
            "pseudo",
        ),
        (dir.0.as_path(), "directory"),
    ] {
        let started = Instant::now();
        let detail = file_error(load(&e, path));
        assert!(detail.contains(expect), "{}: {detail}", path.display());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{}",
            path.display()
        );
    }
}

#[test]
fn saving_never_overwrites_nor_follows_a_symlink() {
    if !kvm_or_skip("saving_never_overwrites_nor_follows_a_symlink") {
        return;
    }
    let (e, t) = small_engine();
    let dir = Dir::new("save");
    let existing = dir.0.join("existing");
    std::fs::write(&existing, b"precious").unwrap();
    let detail = match e.save_template(&t, &existing, &CancelToken::new()) {
        Err(EngineError::TemplateFile { detail, .. }) => detail,
        other => panic!("{other:?}"),
    };
    assert!(detail.contains("exists"), "{detail}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
    // A symlink, dangling or not, is never written through.
    let target = dir.0.join("target");
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(e.save_template(&t, &link, &CancelToken::new()).is_err());
    assert!(!target.exists(), "the save followed the symlink");
    std::fs::write(&target, b"also precious").unwrap();
    assert!(e.save_template(&t, &link, &CancelToken::new()).is_err());
    assert_eq!(std::fs::read(&target).unwrap(), b"also precious");
    // No temporary file is left behind by the failures.
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    // A new name works, and loads.
    let fresh = dir.0.join("fresh.zbt");
    e.save_template(&t, &fresh, &CancelToken::new()).unwrap();
    load(&e, &fresh).unwrap();
}
