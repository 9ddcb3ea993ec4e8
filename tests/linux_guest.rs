//! Linux guests in zeroboot's own VMM: a stock kernel (bzImage) and the
//! image's initramfs booted to the agent's Ready, captured as a template, and
//! forked.
//!
//! - `kernel_loads_into_guest_memory` needs no KVM: it checks the boot layout
//!   a real bzImage produces (zero page, command line, initramfs, ACPI).
//! - `pvm_refuses_linux_at_once`: on kvm-pvm (this project's development and
//!   CI machines) `build_template` must fail fast with `LinuxNeedsHardwareKvm`.
//! - `linux_template_forks_run_python` needs hardware KVM (in CI: the kvm-lane,
//!   nested AMD SVM under QEMU TCG) and the image: `ZEROBOOT_LINUX_KERNEL`
//!   (else the lane's `ZEROBOOT_LANE_KERNEL`, else the lane cache's kernel) and
//!   `ZEROBOOT_LINUX_INITRAMFS`, else `zeroboot::image::build` when apt and
//!   cargo are there. It skips with a message when KVM is kvm-pvm or no image
//!   is available, and fails instead when `ZEROBOOT_REQUIRE_LINUX=1`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use support::kvm_or_skip;
use support::linux::{chain, kernel, linux_template, skip};
use zeroboot::engine::{
    Branching, CancelToken, DEFAULT_LINUX_MEMORY_MIB, Engine, EngineConfig, EngineError,
    ExecRequest, ExecResult, Program,
};
use zeroboot::vmm::Flavor;

#[test]
fn kernel_loads_into_guest_memory() {
    use zeroboot::vmm::memory::{GuestRam, MemoryFile, Sharing};
    let Some(kernel) = kernel() else {
        skip(
            "kernel_loads_into_guest_memory",
            "no kernel (set ZEROBOOT_LINUX_KERNEL)",
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("zeroboot-linux-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initramfs = dir.join("initramfs.cpio");
    let pattern: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&initramfs, &pattern).unwrap();
    let memfd = MemoryFile::create("linux-load-test", 256 << 20).unwrap();
    let ram = GuestRam::map(&memfd, Sharing::Private).unwrap();
    let boot = zeroboot::vmm::linux::load(&ram, &kernel, &initramfs, "console=ttyS0 quiet")
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    std::fs::remove_dir_all(&dir).unwrap();

    let read = |gpa: u64, n: usize| {
        let mut b = vec![0u8; n];
        ram.read(gpa, &mut b).unwrap();
        b
    };
    let u32_at = |gpa: u64| u32::from_le_bytes(read(gpa, 4).try_into().unwrap());
    let zero_page = 0x7000;
    assert_eq!(read(zero_page + 0x1fe, 2), [0x55, 0xaa], "boot_flag");
    assert_eq!(&read(zero_page + 0x202, 4), b"HdrS");
    assert_eq!(read(zero_page + 0x210, 1), [0xff], "type_of_loader");
    assert_eq!(boot.regs.rsi, zero_page);
    assert_eq!(
        boot.regs.rip, 0x10_0200,
        "startup_64 of a kernel loaded at 1 MiB"
    );
    let cmdline_ptr = u64::from(u32_at(zero_page + 0x228));
    let expected = b"console=ttyS0 quiet pci=off\0";
    assert_eq!(read(cmdline_ptr, expected.len()), expected);
    let (initrd, size) = (
        u64::from(u32_at(zero_page + 0x218)),
        u32_at(zero_page + 0x21c),
    );
    assert_eq!(size as usize, pattern.len());
    assert_eq!(initrd % 4096, 0);
    assert!(initrd + u64::from(size) <= 256 << 20);
    assert_eq!(
        read(initrd, pattern.len()),
        pattern,
        "initramfs bytes in place"
    );
    assert_eq!(read(zero_page + 0x1e8, 1), [4], "e820 entries");
    let rsdp = u64::from_le_bytes(read(zero_page + 0x70, 8).try_into().unwrap());
    assert_eq!(&read(rsdp, 8), b"RSD PTR ");
    // The protected-mode kernel follows the setup sectors in the file.
    let file = std::fs::read(&kernel).unwrap();
    let setup = (usize::from(file[0x1f1]).max(4) + 1) * 512;
    assert_eq!(read(0x10_0000, 4096), file[setup..setup + 4096]);
}

#[test]
fn pvm_refuses_linux_at_once() {
    if !kvm_or_skip("pvm_refuses_linux_at_once") {
        return;
    }
    let engine = Engine::new(EngineConfig::default()).expect("KVM engine");
    if engine.flavor() != Flavor::Pvm {
        eprintln!(
            "skipping pvm_refuses_linux_at_once: this KVM is {}",
            engine.flavor().as_str()
        );
        return;
    }
    let t = Instant::now();
    let r = engine.build_template(
        Path::new("/nonexistent/vmlinuz"),
        Path::new("/nonexistent/initramfs"),
        DEFAULT_LINUX_MEMORY_MIB,
        None,
        &CancelToken::new(),
    );
    assert!(
        matches!(r, Err(EngineError::LinuxNeedsHardwareKvm)),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("kvm-pvm") && msg.contains("hardware KVM"),
        "{msg}"
    );
}

fn exec(engine: &Engine, sb: &str, req: &ExecRequest) -> ExecResult {
    let req = ExecRequest {
        timeout: req.timeout.or(Some(Duration::from_secs(120))),
        ..req.clone()
    };
    engine
        .exec(sb, &req, &CancelToken::new(), &mut |_, _| {})
        .unwrap_or_else(|e| panic!("exec {:?}: {}", req.argv, chain(&e)))
}

fn python(source: &str) -> ExecRequest {
    ExecRequest {
        argv: vec![source.into()],
        program: Program::Python,
        ..Default::default()
    }
}

fn argv(args: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn linux_template_forks_run_python() {
    const TEST: &str = "linux_template_forks_run_python";
    if !kvm_or_skip(TEST) {
        return;
    }
    let t = Instant::now();
    let Some((engine, tpl)) = linux_template(TEST) else {
        return;
    };
    let build_ms = t.elapsed().as_millis();
    assert_eq!(tpl.memory_bytes, DEFAULT_LINUX_MEMORY_MIB << 20);

    let t = Instant::now();
    let a = engine.fork(&tpl.template).unwrap().sandbox;
    let r = exec(&engine, &a, &python("print(1+1)"));
    let fork_exec_ms = t.elapsed().as_millis();
    assert_eq!(
        (text(&r.stdout).as_str(), r.exit_code),
        ("2\n", Some(0)),
        "stderr: {}",
        text(&r.stderr)
    );
    assert!(r.stderr.is_empty(), "{}", text(&r.stderr));
    let b = engine.fork(&tpl.template).unwrap().sandbox;

    // Exit codes and stderr are the program's own, for Python and for argv.
    let r = exec(
        &engine,
        &a,
        &python("import sys\nprint('to stderr', file=sys.stderr)\nsys.exit(7)"),
    );
    assert_eq!(
        (r.exit_code, text(&r.stderr).as_str(), r.stdout.len()),
        (Some(7), "to stderr\n", 0)
    );
    let r = exec(
        &engine,
        &b,
        &argv(&[
            "/usr/bin/python3",
            "-c",
            "import sys; print('out'); sys.stderr.write('err'); sys.exit(3)",
        ]),
    );
    assert_eq!(
        (
            text(&r.stdout).as_str(),
            text(&r.stderr).as_str(),
            r.exit_code
        ),
        ("out\n", "err", Some(3))
    );
    let r = exec(&engine, &b, &python("raise ValueError('boom')"));
    assert_ne!(r.exit_code, Some(0));
    assert!(
        text(&r.stderr).contains("ValueError: boom"),
        "{}",
        text(&r.stderr)
    );

    // Fresh entropy per fork, kernel and userspace.
    let probe = python("import os, random\nprint(os.urandom(16).hex(), random.random())");
    let (ra, rb) = (exec(&engine, &a, &probe), exec(&engine, &b, &probe));
    assert_eq!(
        (ra.exit_code, rb.exit_code),
        (Some(0), Some(0)),
        "{} {}",
        text(&ra.stderr),
        text(&rb.stderr)
    );
    let (sa, sb) = (text(&ra.stdout), text(&rb.stdout));
    let (wa, wb): (Vec<&str>, Vec<&str>) = (
        sa.split_whitespace().collect(),
        sb.split_whitespace().collect(),
    );
    assert_eq!((wa.len(), wb.len()), (2, 2), "{sa:?} {sb:?}");
    assert_ne!(wa[0], wb[0], "os.urandom(16) repeated across forks");
    assert_ne!(wa[1], wb[1], "random.random() repeated across forks");

    // The guest's wall clock is the host's now, not the snapshot's.
    let r = exec(&engine, &b, &python("import time\nprint(time.time())"));
    let guest: f64 = text(&r.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{:?}", text(&r.stdout)));
    let host = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((host - guest).abs() < 1.0, "guest {guest} vs host {host}");

    // Forks do not see each other's files.
    exec(&engine, &a, &python("open('/tmp/mark', 'w').write('a')"));
    let r = exec(
        &engine,
        &b,
        &python("import os\nprint(os.path.exists('/tmp/mark'))"),
    );
    assert_eq!(text(&r.stdout), "False\n");

    // A file of many mailbox frames arrives whole, with its mode, and comes back.
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let (timeout, cancel) = (Some(Duration::from_secs(60)), CancelToken::new());
    engine
        .write_file(&a, "/tmp/big.bin", data.clone(), 0o640, timeout, &cancel)
        .unwrap();
    let r = exec(
        &engine,
        &a,
        &python(
            "import os\nst = os.stat('/tmp/big.bin')\nprint(st.st_size, oct(st.st_mode & 0o777))",
        ),
    );
    assert_eq!(text(&r.stdout), format!("{} 0o640\n", 3 << 20));
    let back = engine.read_file(&a, "/tmp/big.bin", 3 << 20, timeout, &cancel);
    assert!(back.unwrap() == data, "3 MiB came back different");

    // Branches. Each Python exec is a fresh process forked from the agent's
    // zygote, so state that outlives an exec lives in guest memory: a tmpfs
    // file set by Python before the branch, changed differently in two forks
    // of it, and in the parent after it.
    let state = |v: &str| python(&format!("open('/tmp/state', 'w').write('{v}')"));
    let read = python("print(open('/tmp/state').read())");
    exec(&engine, &b, &state("before"));
    let t = Instant::now();
    let branch = engine
        .snapshot_sandbox(&b, Branching::Layer, &CancelToken::new())
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    let snapshot_ms = t.elapsed().as_millis();
    assert_eq!(branch.depth, 1);
    exec(&engine, &b, &state("parent"));
    let t = Instant::now();
    let (x, y) = (
        engine.fork(&branch.template).unwrap().sandbox,
        engine.fork(&branch.template).unwrap().sandbox,
    );
    assert_eq!(text(&exec(&engine, &x, &read).stdout), "before\n");
    let branch_fork_exec_ms = t.elapsed().as_millis();
    exec(&engine, &x, &state("x"));
    exec(&engine, &y, &state("y"));
    assert_eq!(text(&exec(&engine, &x, &read).stdout), "x\n");
    assert_eq!(text(&exec(&engine, &y, &read).stdout), "y\n");
    assert_eq!(text(&exec(&engine, &b, &read).stdout), "parent\n");
    // A branch of a branch, saved to a file and loaded back.
    let deeper = engine
        .snapshot_sandbox(&x, Branching::Layer, &CancelToken::new())
        .unwrap();
    let path = std::env::temp_dir().join(format!("zeroboot-linux-{}.zbt", std::process::id()));
    let _ = std::fs::remove_file(&path);
    engine
        .save_template(&deeper.template, &path, &CancelToken::new())
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    let loaded = engine
        .load_file(&path, &CancelToken::new())
        .unwrap_or_else(|e| panic!("{}", chain(&e)));
    std::fs::remove_file(&path).unwrap();
    let z = engine.fork(&loaded.template).unwrap().sandbox;
    assert_eq!(text(&exec(&engine, &z, &read).stdout), "x\n");
    let r = exec(&engine, &z, &python("print(6*7)"));
    assert_eq!(text(&r.stdout), "42\n");
    let z2 = engine.fork(&deeper.template).unwrap().sandbox;
    assert_eq!(text(&exec(&engine, &z2, &read).stdout), "x\n");
    eprintln!(
        "{TEST}: branch of a {} MiB guest: snapshot {snapshot_ms} ms holding {} KiB, \
         first fork + Python exec of it {branch_fork_exec_ms} ms",
        DEFAULT_LINUX_MEMORY_MIB,
        branch.memory.own_bytes / 1024
    );
    for sb in [x, y, z, z2] {
        engine.kill(&sb).unwrap();
    }

    engine.kill(&a).unwrap();
    engine.kill(&b).unwrap();
    eprintln!(
        "{TEST}: template build {build_ms} ms, first fork + Python exec {fork_exec_ms} ms ({} KVM)",
        engine.flavor().as_str()
    );
    engine.shutdown();
}
