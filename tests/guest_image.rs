//! The guest image booted under QEMU TCG (`-M microvm -accel tcg -cpu max`)
//! with the agent as PID 1 on a second serial port (ttyS1; the kernel console
//! stays on ttyS0): Python execs, exit codes, entropy and clock per exec,
//! files, the minimal profile's modules; images built from template specs
//! (numpy preloaded, busybox's `sh`, a non-root user, Debian's nodejs with
//! the agent's reseed module; an OCI image's Env). Prints boot-to-ready and exec
//! round-trip times. One test needs no QEMU: the minimal image's size budget.
//!
//! QEMU: `ZEROBOOT_QEMU` (a command that runs qemu-system-x86_64), else the
//! kvm-lane's (`bookworm/bin/qemu-system-x86_64` in `ZEROBOOT_LANE_CACHE`,
//! default `/var/cache/zeroboot-lane`: Debian bookworm's QEMU 7.2 through its
//! own loader), else `qemu-system-x86_64` on PATH. Without QEMU (or without
//! apt to build the image) the test prints a skip message, or fails when
//! `ZEROBOOT_REQUIRE_QEMU=1`.

mod agent_support;

use agent_support::{Client, CodeSpec, ExecSpec, now_ns};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use zeroboot::image::{BuildOptions, ImageError, ImagePaths, Profile};
use zeroboot_proto::AgentKind;

/// How long the whole conversation with the guest may take before the
/// watchdog kills QEMU (boot takes ~2 s on an idle 2-core machine).
const WATCHDOG: Duration = Duration::from_secs(240);

fn skip(reason: &str) {
    if std::env::var("ZEROBOOT_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("ZEROBOOT_REQUIRE_QEMU=1 but {reason}");
    }
    eprintln!("SKIPPED guest_image: {reason} (set ZEROBOOT_REQUIRE_QEMU=1 to make this a failure)");
}

/// A command that runs qemu-system-x86_64.
struct Qemu {
    bin: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn find_qemu() -> Option<Qemu> {
    let cache = std::env::var_os("ZEROBOOT_LANE_CACHE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/zeroboot-lane"), PathBuf::from);
    // The lane's wrapper: bookworm's QEMU through bookworm's loader, with its
    // libraries, TCG module and firmware (tests/kvm-lane/README.md).
    let lane = cache.join("bookworm/bin/qemu-system-x86_64");
    let bin = std::env::var_os("ZEROBOOT_QEMU")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| lane.is_file().then_some(lane))
        .or_else(|| on_path("qemu-system-x86_64"))?;
    Some(Qemu { bin })
}

/// The host's TSC rate in kHz: given to the guest kernel so it does not
/// calibrate against the emulated PIT (that hangs now and then under TCG).
fn tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

struct Guest {
    child: Child,
    console: PathBuf,
    stop_watchdog: mpsc::Sender<()>,
}

impl Guest {
    fn boot(
        qemu: &Qemu,
        kernel: &Path,
        initramfs: &Path,
        dir: &Path,
    ) -> (Guest, Client<ChildStdout, ChildStdin>) {
        Guest::boot_with(qemu, kernel, initramfs, dir, 512)
    }

    fn boot_with(
        qemu: &Qemu,
        kernel: &Path,
        initramfs: &Path,
        dir: &Path,
        memory_mib: u32,
    ) -> (Guest, Client<ChildStdout, ChildStdin>) {
        let console = dir.join("console.log");
        let mut cmdline = format!(
            "{} zeroboot.transport=serial:/dev/ttyS1",
            zeroboot::image::KERNEL_CMDLINE
        );
        if let Some(khz) = tsc_khz() {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        let mut cmd = Command::new(&qemu.bin);
        cmd.args([
            "-M",
            "microvm,isa-serial=on,rtc=on",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            &memory_mib.to_string(),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(&cmdline)
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-chardev", "stdio,id=agent,signal=off"])
        .args(["-device", "isa-serial,chardev=agent,iobase=0x2f8,irq=3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning QEMU");
        let client = Client::new(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let (stop_watchdog, stopped) = mpsc::channel::<()>();
        let pid = child.id() as libc::pid_t;
        std::thread::spawn(move || {
            if stopped.recv_timeout(WATCHDOG).is_err() {
                eprintln!("guest_image: watchdog: killing QEMU after {WATCHDOG:?}");
                // SAFETY: kill takes integers; the pid is our unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        (
            Guest {
                child,
                console,
                stop_watchdog,
            },
            client,
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _stopped = self.stop_watchdog.send(());
        let _killed = self.child.kill().and_then(|()| self.child.wait());
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.console).unwrap_or_default();
            let tail: String = log
                .chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!("--- guest console (tail) ---\n{tail}\n---");
        }
    }
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// A built image of `profile`, or `None` after printing why the test is
/// skipped. The build itself imports every module the minimal profile
/// promises in the staged tree, with the staged interpreter, and fails if
/// one is missing (src/image/python.rs).
fn build(profile: Profile) -> Option<ImagePaths> {
    let opts = BuildOptions {
        profile,
        ..BuildOptions::default()
    };
    let paths = match zeroboot::image::build(&opts) {
        Ok(p) => p,
        Err(ImageError::NoApt) => {
            skip("no apt-get to build the guest image");
            return None;
        }
        Err(e) => panic!("image build failed: {e}"),
    };
    let size = std::fs::metadata(&paths.initramfs).unwrap().len();
    eprintln!(
        "guest_image: {profile:?} initramfs {} ({:.1} MB)",
        paths.initramfs.display(),
        size as f64 / 1e6
    );
    Some(paths)
}

/// QEMU and a built image of `profile`, or `None` after printing why the
/// test is skipped.
fn prepare(profile: Profile) -> Option<(Qemu, ImagePaths)> {
    let Some(qemu) = find_qemu() else {
        skip("no QEMU found (set ZEROBOOT_QEMU, or run tests/kvm-lane/run once to fetch it)");
        return None;
    };
    Some((qemu, build(profile)?))
}

/// The size budget of the default image (its issue: "~13 MB raw"); 12.9 MB
/// measured before the network modules (~0.43 MB: virtio_net, tun and their
/// dependencies, issue 14) and the agent's code runner (~0.1 MB, issue 16)
/// came in, 13.52 MB measured with them; broken down in src/image/mod.rs.
const MINIMAL_MAX_BYTES: u64 = 13_750_000;

#[test]
fn minimal_initramfs_stays_within_its_size_budget() {
    let Some(paths) = build(Profile::Minimal) else {
        return;
    };
    let size = std::fs::metadata(&paths.initramfs).unwrap().len();
    assert!(
        size <= MINIMAL_MAX_BYTES,
        "minimal initramfs is {size} bytes, over {MINIMAL_MAX_BYTES} (src/image/mod.rs has the measured breakdown)"
    );
}

#[test]
fn guest_image_runs_python_under_qemu() {
    let Some((qemu, paths)) = prepare(Profile::Minimal) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("zeroboot-guest-image-{}-min", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let (_guest, mut c) = Guest::boot(&qemu, &paths.kernel, &paths.initramfs, &dir);
    let ready = c.ready();
    let boot = started.elapsed();
    assert_eq!(ready.agent, AgentKind::Linux);
    eprintln!("guest_image: boot to Ready {:.2} s", boot.as_secs_f64());

    // Python in the warm zygote: output, exit codes, stderr.
    let run = c.exec(&ExecSpec::python("import json, os, random, sys\nprint(json.dumps({'pid1': os.getppid() != 0, 'warm': 'json' in sys.modules}))"));
    assert_eq!(
        run.stdout_str(),
        "{\"pid1\": true, \"warm\": true}\n",
        "stderr: {}",
        run.stderr_str()
    );
    // Every module the minimal profile promises imports in the guest too.
    let keep = format!("import {}", zeroboot::image::minimal_modules().join(", "));
    let run = c.exec(&ExecSpec::python(&keep));
    assert_eq!(run.status().code, 0, "stderr: {}", run.stderr_str());
    let run = c.exec(&ExecSpec::python(
        "import sys\nprint('bad', file=sys.stderr)\nsys.exit(3)",
    ));
    assert_eq!((run.status().code, run.stderr_str().as_str()), (3, "bad\n"));
    let run = c.exec(&ExecSpec::argv(&[
        "/usr/bin/python3",
        "-c",
        "import os; os.kill(os.getpid(), 9)",
    ]));
    assert_eq!(run.status().signal, 9);

    // Entropy and clock are refreshed per exec from the host's values.
    let probe =
        "import os, random, time\nprint(os.urandom(16).hex(), random.random(), time.time())";
    let a = c.exec(&ExecSpec::python(probe)).stdout_str();
    let b = c.exec(&ExecSpec::python(probe)).stdout_str();
    let (a, b): (Vec<&str>, Vec<&str>) = (
        a.split_whitespace().collect(),
        b.split_whitespace().collect(),
    );
    assert_eq!((a.len(), b.len()), (3, 3), "{a:?} {b:?}");
    assert_ne!(a[0], b[0], "os.urandom(16) repeated");
    assert_ne!(a[1], b[1], "random.random() repeated");
    let guest_time: f64 = b[2].parse().unwrap();
    let host_time = now_ns() as f64 / 1e9;
    assert!(
        (host_time - guest_time).abs() < 1.0,
        "guest clock {guest_time} vs host {host_time}"
    );

    // PID 1 reaps orphans: a background child outliving its exec leaves no zombie.
    assert_eq!(
        c.exec(&ExecSpec::argv(&[
            "/usr/bin/python3",
            "-c",
            "import os\nif os.fork() == 0:\n    os.setsid()\n    import time; time.sleep(0.2)"
        ]))
        .status()
        .code,
        0
    );
    std::thread::sleep(Duration::from_millis(600));
    let zombies = "import os\nprint(sum(open(f'/proc/{p}/stat').read().split(') ')[1][0] == 'Z' for p in os.listdir('/proc') if p.isdigit()))";
    assert_eq!(c.exec(&ExecSpec::python(zombies)).stdout_str(), "0\n");

    // Files.
    c.write_file("/root/data.txt", 0o640, b"payload").unwrap();
    let run = c.exec(&ExecSpec::python("print(open('/root/data.txt').read())"));
    assert_eq!(run.stdout_str(), "payload\n");
    c.write_file("/tmp/out.bin", 0o600, &[]).unwrap();
    c.exec(&ExecSpec::python(
        "open('/tmp/out.bin', 'wb').write(bytes(range(256)) * 100)",
    ));
    assert_eq!(
        c.read_file("/tmp/out.bin", 1 << 16).unwrap(),
        (0..=255u8).cycle().take(25_600).collect::<Vec<_>>()
    );

    // Timeout kills a spinning program and the guest keeps serving.
    let t = Instant::now();
    let run = c.exec(&ExecSpec::python("while True: pass").timeout_ms(500));
    assert_eq!(
        run.status().flags & zeroboot_proto::EXIT_TIMED_OUT,
        zeroboot_proto::EXIT_TIMED_OUT
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "timeout took {:?}",
        t.elapsed()
    );

    // Round-trip times over the serial port (TCG, so indicative only).
    let time = |c: &mut Client<_, _>, spec: &ExecSpec| {
        (0..10)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(c.exec(spec).status().code, 0);
                t.elapsed()
            })
            .collect::<Vec<_>>()
    };
    let py = median_ms(time(&mut c, &ExecSpec::python("pass")));
    let argv = median_ms(time(
        &mut c,
        &ExecSpec::argv(&["/usr/bin/python3.11", "-S", "-c", "pass"]),
    ));
    let t = Instant::now();
    let big = c.exec(&ExecSpec::python(
        "import sys\nsys.stdout.write('x' * 1000000)",
    ));
    let big_s = t.elapsed().as_secs_f64();
    assert_eq!(big.stdout.len(), 1_000_000);
    eprintln!(
        "guest_image: exec round trip (median of 10): python zygote {py:.1} ms, cold python3 -S {argv:.1} ms; \
         1 MB of output in {big_s:.2} s ({} frames)",
        big.output_frames
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn full_profile_carries_the_whole_standard_library() {
    let Some((qemu, paths)) = prepare(Profile::Full) else {
        return;
    };
    let dir =
        std::env::temp_dir().join(format!("zeroboot-guest-image-{}-full", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_guest, mut c) = Guest::boot(&qemu, &paths.kernel, &paths.initramfs, &dir);
    c.ready();
    let code = "import sqlite3, ssl, decimal, ctypes, asyncio, lzma, bz2, zoneinfo, uuid, subprocess\n\
                print(sqlite3.connect(':memory:').execute('select 41 + 1').fetchone()[0],\n\
                      decimal.Decimal('1.1') + 1, ssl.OPENSSL_VERSION.split()[0],\n\
                      subprocess.run(['python3', '-c', 'print(5)'], capture_output=True).stdout)";
    let run = c.exec(&ExecSpec::python(code));
    assert_eq!(
        run.stdout_str(),
        "42 2.1 OpenSSL b'5\\n'\n",
        "stderr: {}",
        run.stderr_str()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A spec image built in the default cache, or `None` after printing why
/// the test is skipped (no apt, no uv).
fn build_spec(spec: &zeroboot::spec::Spec) -> Option<zeroboot::image::spec_image::SpecImage> {
    use zeroboot::image::spec_image::{SpecBuildOptions, build};
    match build(spec, &SpecBuildOptions::default(), &mut |_| {}) {
        Ok(img) => {
            eprintln!(
                "guest_image: spec image {} ({:.1} MB, cached: {})",
                img.initramfs.display(),
                img.manifest.initramfs_bytes as f64 / 1e6,
                img.cached
            );
            Some(img)
        }
        Err(ImageError::NoApt) => {
            skip("no apt-get to build the guest image");
            None
        }
        Err(ImageError::NoUv) => {
            skip("no uv to resolve python.packages (pip install uv)");
            None
        }
        Err(e) => panic!("spec image build failed: {}", zeroboot::error_chain(&e)),
    }
}

#[test]
fn spec_image_runs_numpy_a_shell_and_node_under_qemu() {
    let Some(qemu) = find_qemu() else {
        skip("no QEMU found (set ZEROBOOT_QEMU, or run tests/kvm-lane/run once to fetch it)");
        return;
    };
    // The lane's spec (tests/template_spec.rs): the same image, cached once.
    let spec = zeroboot::spec::Spec::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/numpy/zeroboot.toml"),
    )
    .unwrap();
    let Some(img) = build_spec(&spec) else { return };
    assert_eq!(img.manifest.python[0].name, "numpy");
    let dir =
        std::env::temp_dir().join(format!("zeroboot-guest-image-{}-spec", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    let (_guest, mut c) = Guest::boot_with(&qemu, &img.kernel, &img.initramfs, &dir, 1024);
    c.ready();
    eprintln!(
        "guest_image: spec image boot to Ready {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let run = c.exec(&ExecSpec::python(
        "import sys, os\nprint('numpy' in sys.modules, os.getuid(), os.environ['GREETING'], os.environ['HOME'])\n\
         import numpy\nprint(numpy.arange(4).sum())",
    ));
    assert_eq!(
        run.stdout_str(),
        "True 1000 hi /home/sandbox\n6\n",
        "stderr: {}",
        run.stderr_str()
    );
    let run = c.exec(&ExecSpec::argv(&[
        "sh",
        "-c",
        "echo $((1+2)); id -u; exit 4",
    ]));
    assert_eq!(
        (run.stdout_str(), run.status().code),
        ("3\n1000\n".to_owned(), 4),
        "stderr: {}",
        run.stderr_str()
    );
    // The image has Debian's node, so the build packed the reseed module the
    // agent hands its JavaScript workers: node loads it and reseeds OpenSSL.
    let run = c.exec(&ExecSpec::argv(&[
        "node",
        "-e",
        "const m = { exports: {} }; process.dlopen(m, '/usr/lib/zeroboot/reseed.node'); \
         m.exports.reseed(); console.log(process.version.split('.')[0], require('crypto').randomBytes(16).length)",
    ]));
    assert_eq!(
        (run.stdout_str(), run.status().code),
        ("v18 16\n".to_owned(), 0),
        "stderr: {}",
        run.stderr_str()
    );
    let js = c.run_code(&CodeSpec::javascript("[1, 2].length"));
    assert_eq!(js.result(), Some("2"), "stderr: {}", js.stderr());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A `docker save` archive whose one layer holds a static busybox as
/// `/bin/busybox` and `/bin/sh`, and whose config sets Env and WorkingDir.
fn busybox_image(dir: &Path) -> Option<PathBuf> {
    use zeroboot::image::debian::Debian;
    let cache = zeroboot::image::cache::default_dir().unwrap();
    let debian = match Debian::open(&cache.join("debian")) {
        Ok(d) => d,
        Err(ImageError::NoApt) => {
            skip("no apt-get to fetch busybox");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let pkgs = debian.closure(&["busybox-static".to_owned()]).unwrap();
    let debs = debian.fetch(&pkgs, &mut |_| {}).unwrap();
    let unpacked = dir.join("busybox");
    let deb = debs
        .iter()
        .find(|d| d.package.name == "busybox-static")
        .unwrap();
    Debian::extract(&deb.path, &unpacked).unwrap();
    let busybox = std::fs::read(unpacked.join("bin/busybox")).unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(busybox.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    layer
        .append_data(&mut h, "bin/busybox", &busybox[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    layer.append_link(&mut h, "bin/sh", "busybox").unwrap();
    let layer = layer.into_inner().unwrap();
    let config =
        br#"{"config":{"Env":["PATH=/bin","GREETING=hello from oci"],"WorkingDir":"/srv"}}"#;
    let manifest = br#"[{"Config":"config.json","Layers":["layer/layer.tar"]}]"#;
    let mut outer = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", &manifest[..]),
        ("config.json", &config[..]),
        ("layer/layer.tar", &layer[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        outer.append_data(&mut h, name, data).unwrap();
    }
    let path = dir.join("busybox-image.tar");
    std::fs::write(&path, outer.into_inner().unwrap()).unwrap();
    Some(path)
}

#[test]
fn oci_image_boots_with_its_env_under_qemu() {
    let Some(qemu) = find_qemu() else {
        skip("no QEMU found (set ZEROBOOT_QEMU, or run tests/kvm-lane/run once to fetch it)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("zeroboot-guest-image-{}-oci", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(image) = busybox_image(&dir) else {
        return;
    };
    let spec = zeroboot::spec::Spec::from_toml(
        &format!(
            "base = {{ oci = \"{}\" }}\nenv = {{ EXTRA = \"spec\" }}",
            image.display()
        ),
        Path::new("/"),
    )
    .unwrap();
    let Some(img) = build_spec(&spec) else { return };
    let (_guest, mut c) = Guest::boot(&qemu, &img.kernel, &img.initramfs, &dir);
    c.ready();
    let run = c.exec(&ExecSpec::argv(&[
        "/bin/sh",
        "-c",
        "echo $GREETING $EXTRA; pwd",
    ]));
    assert_eq!(
        run.stdout_str(),
        "hello from oci spec\n/srv\n",
        "stderr: {}",
        run.stderr_str()
    );
    // No Python in this image: a Python exec is refused, not hung.
    let run = c.exec(&ExecSpec::python("print(1)"));
    assert!(
        matches!(run.end, agent_support::End::Error(..)),
        "{:?}",
        run.end
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
