//! Least privilege, seen from outside the worker: every thread of a running
//! `zeroboot serve` is under a seccomp filter with NoNewPrivs and no
//! capability (vCPU threads under one more filter), and an ordinary user
//! who may open /dev/kvm runs the worker, forks and execs.

#[path = "common/rpc_client.rs"]
mod rpc_client;
#[path = "common/rpc_schema.rs"]
mod rpc_schema;

use std::process::Command;

use rpc_client::{Framing, Worker, kvm_or_skip};
use serde_json::json;

/// One thread's name and the status lines that matter here.
struct ThreadStatus {
    name: String,
    seccomp: String,
    filters: u32,
    no_new_privs: String,
    cap_eff: String,
    uid: String,
}

fn threads(pid: u32) -> Vec<ThreadStatus> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(status), Ok(name)) = (
            std::fs::read_to_string(dir.join("status")),
            std::fs::read_to_string(dir.join("comm")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        out.push(ThreadStatus {
            name: name.trim().to_string(),
            seccomp: field("Seccomp:"),
            filters: field("Seccomp_filters:").parse().unwrap_or(0),
            no_new_privs: field("NoNewPrivs:"),
            cap_eff: field("CapEff:"),
            uid: field("Uid:"),
        });
    }
    out
}

/// Loads, forks, execs and snapshots, so every kind of thread exists.
fn exercise(w: &mut Worker) {
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    let r = w.ok(
        "sandbox.exec",
        json!({"sandbox": sb, "argv": ["echo", "confined"]}),
    );
    assert_eq!(r["stdout"], "confined\n");
    w.ok("sandbox.snapshot", json!({"sandbox": sb}));
    let r = w.ok(
        "sandbox.exec",
        json!({"sandbox": sb, "argv": ["dirty", "100"]}),
    );
    assert_eq!(r["exit_code"], 0);
}

#[test]
fn every_thread_is_filtered_and_holds_no_capability() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    exercise(&mut w);
    let worker_filters = threads(w.pid())
        .iter()
        .find(|t| t.name == "zeroboot")
        .expect("the main thread")
        .filters;
    assert!(worker_filters >= 1);
    // A vCPU thread adds its filter once its VM exists, so one the pool is
    // making right now has the worker's only: look again until none is, for
    // at most 10 s (a thread that never adds it fails below).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let all = loop {
        let all = threads(w.pid());
        let making = all
            .iter()
            .any(|t| t.name.starts_with("vcpu-") && t.filters != worker_filters + 1);
        if !making || std::time::Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut vcpus = 0;
    for t in &all {
        assert_eq!(
            t.seccomp, "2",
            "thread {} has Seccomp {}",
            t.name, t.seccomp
        );
        assert_eq!(t.no_new_privs, "1", "thread {}", t.name);
        assert_eq!(t.cap_eff, "0000000000000000", "thread {}", t.name);
        if t.name.starts_with("vcpu-") {
            vcpus += 1;
            assert_eq!(t.filters, worker_filters + 1, "vCPU thread {}", t.name);
        }
    }
    assert!(vcpus >= 2, "{vcpus} vCPU threads seen");
    w.assert_clean();
    w.shutdown();
}

const USER: &str = "zeroboot-test";

fn id(flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, USER]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// A device node for KVM owned by `uid`, in /dev (which allows device nodes).
struct KvmNode(std::path::PathBuf);

impl KvmNode {
    fn new(uid: u32, gid: u32) -> KvmNode {
        let path =
            std::path::PathBuf::from(format!("/dev/zeroboot-test-kvm-{}", std::process::id()));
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mknod and chown read a valid C string; the node is KVM's
        // (character device 10:232) and removed on drop.
        unsafe {
            assert_eq!(
                libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(10, 232)),
                0
            );
            assert_eq!(libc::chown(c.as_ptr(), uid, gid), 0);
        }
        KvmNode(path)
    }
}

impl Drop for KvmNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn an_ordinary_user_with_access_to_dev_kvm_forks_and_execs() {
    if !kvm_or_skip() {
        return;
    }
    if std::env::var_os("ZEROBOOT_LANE").is_some() {
        eprintln!("skipping: the lane's L1 has no useradd, unshare or setpriv");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: making a user and a device node needs root");
        return;
    }
    if id("-u").is_none() {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status()
            .expect("useradd runs");
        assert!(made.success(), "useradd {USER} failed");
    }
    let (uid, gid) = (id("-u").unwrap(), id("-g").unwrap());
    // The user may open /dev/kvm, as `usermod -aG kvm USER` or an ACL would
    // allow: here, in a mount namespace of its own, /dev/kvm is a node the
    // user owns, so the host's /dev/kvm is left as it is.
    let node = KvmNode::new(uid, gid);
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /dev/kvm && exec setpriv --reuid=\"$1\" --regid=\"$2\" --clear-groups \"$3\" serve --pool 2")
        .arg(&node.0)
        .arg(uid.to_string())
        .arg(gid.to_string())
        .arg(env!("CARGO_BIN_EXE_zeroboot"));
    let mut w = Worker::spawn_command(Framing::Ndjson, cmd);
    let info = w.ok("worker.info", json!({}));
    assert_eq!(info["kvm"]["available"], true, "{info}");
    exercise(&mut w);
    for t in threads(w.pid()) {
        let uids: Vec<&str> = t.uid.split_whitespace().collect();
        assert!(
            uids.iter().all(|u| *u == uid.to_string()),
            "thread {} runs as {:?}",
            t.name,
            uids
        );
        assert_eq!(t.cap_eff, "0000000000000000", "thread {}", t.name);
        assert_eq!(t.seccomp, "2", "thread {}", t.name);
    }
    w.assert_clean();
    w.shutdown();
}

/// Children of `pid` whose command line is `zeroboot build-helper`.
fn build_helpers(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The parent pid is the second field after the command's ")".
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            ppid == Some(pid) && cmdline.ends_with(b"build-helper\0")
        })
        .collect()
}

#[test]
fn a_confined_worker_has_its_build_helper_and_takes_it_along_when_it_ends() {
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    // Answered once the worker is confined (the helper starts before).
    w.ok("worker.ping", json!({}));
    let pid = w.pid();
    let helpers = build_helpers(pid);
    assert_eq!(helpers.len(), 1, "one build helper: {helpers:?}");
    w.shutdown();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{}/cmdline", helpers[0])).exists()
        && std::fs::read(format!("/proc/{}/cmdline", helpers[0])).is_ok_and(|c| !c.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the helper outlived its worker"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut unconfined = Worker::spawn(Framing::Ndjson, &["--no-seccomp"]);
    unconfined.ok("worker.ping", json!({}));
    assert!(
        build_helpers(unconfined.pid()).is_empty(),
        "an unconfined worker builds itself"
    );
    unconfined.shutdown();
}
