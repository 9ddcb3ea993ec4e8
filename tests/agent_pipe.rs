//! The Linux agent's exec, file and reseed logic, run as a host process that
//! speaks the protocol over its stdin/stdout, with the host's real python3.
//! The binary under test is the static one the guest image packs.

mod agent_support;

use agent_support::{Client, End, ExecSpec};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use zeroboot_proto::{
    AgentErrorCode, AgentKind, EXIT_TIMED_OUT, FILE_CONTINUE, FILE_MORE, Kind, MAX_PAYLOAD,
    VERSION, WriteFile,
};

fn agent_binary() -> &'static PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT.get_or_init(|| {
        let source = zeroboot::image::source_tree().expect("tests run from the source tree");
        zeroboot::image::build_agent(&source).expect("building the static agent")
    })
}

/// A running agent and the host end of its pipes; killed on drop.
struct Agent {
    child: Child,
    client: Client<ChildStdout, ChildStdin>,
}

impl Agent {
    fn start() -> Agent {
        Agent::start_with(&[])
    }

    /// An agent with extra arguments (`--template PATH`).
    fn start_with(extra: &[&std::ffi::OsStr]) -> Agent {
        let python = PathBuf::from("/usr/bin/python3");
        assert!(
            python.is_file(),
            "these tests need the host's python3 (3.11)"
        );
        let mut child = Command::new(agent_binary())
            .args(["--transport", "stdio", "--python"])
            .arg(&python)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the agent");
        let mut client = Client::new(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let ready = client.ready();
        assert_eq!((ready.version, ready.agent), (VERSION, AgentKind::Linux));
        Agent { child, client }
    }

    fn exec(&mut self, spec: &ExecSpec) -> agent_support::Run {
        self.client.exec(spec)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _reaped = self.child.kill().and_then(|()| self.child.wait());
    }
}

/// A directory of this test's own (tests in one binary run in parallel).
fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("zeroboot-agent-pipe-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sh(script: &str) -> ExecSpec {
    ExecSpec::argv(&["/bin/sh", "-c", script])
}

#[test]
fn the_template_settings_are_every_execs_defaults() {
    let dir = temp_dir("template");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let conf = dir.join("agent.conf");
    std::fs::write(
        &conf,
        format!(
            "preload xml.dom.minidom
env GREETING=hello
env SHADOWED=default
cwd {}
{}",
            work.display(),
            if root {
                "user 4242 4343
"
            } else {
                ""
            }
        ),
    )
    .unwrap();
    let mut a = Agent::start_with(&["--template".as_ref(), conf.as_os_str()]);
    let probe = "import os, sys
print(os.environ['GREETING'], os.environ['SHADOWED'], os.getcwd(),                  'xml.dom.minidom' in sys.modules, os.getuid(), os.getgid(), os.getgroups())";
    let run = a.exec(&ExecSpec::python(probe).env("SHADOWED", "request"));
    let ids = if root { "4242 4343 []" } else { "" };
    let want = format!("hello request {} True {ids}", work.display());
    assert!(
        run.stdout_str().starts_with(want.trim()),
        "{} / {}",
        run.stdout_str(),
        run.stderr_str()
    );
    let run = a.exec(&sh("echo $GREETING $(pwd) $(id -u)"));
    let uid = if root { "4242" } else { "" };
    assert!(
        run.stdout_str()
            .starts_with(&format!("hello {} {uid}", work.display())),
        "{}",
        run.stdout_str()
    );
    // A request's own directory wins.
    let run = a.exec(&sh("pwd").cwd("/tmp"));
    assert_eq!(run.stdout_str(), "/tmp\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exit_codes_and_signals_are_real() {
    let mut a = Agent::start();
    assert_eq!(a.exec(&sh("exit 0")).status().code, 0);
    let s = a.exec(&sh("exit 3")).status();
    assert_eq!((s.code, s.signal, s.flags), (3, 0, 0));
    let s = a.exec(&sh("kill -TERM $$")).status();
    assert_eq!((s.signal, s.code), (libc::SIGTERM, 128 + libc::SIGTERM));
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let mut a = Agent::start();
    let run = a.exec(&sh("echo out; echo err >&2; exit 1"));
    assert_eq!(run.stdout_str(), "out\n");
    assert_eq!(run.stderr_str(), "err\n");
    assert_eq!(run.status().code, 1);
}

#[test]
fn env_cwd_and_stdin_reach_the_program() {
    let mut a = Agent::start();
    let run = a.exec(
        &sh("echo \"$GREETING\"; pwd; cat")
            .env("GREETING", "hi there")
            .cwd("/tmp")
            .stdin(b"from stdin"),
    );
    assert_eq!(run.stdout_str(), "hi there\n/tmp\nfrom stdin");
    assert_eq!(run.status().code, 0);
}

#[test]
fn spawn_failures_and_bad_requests_are_errors_not_exits() {
    let mut a = Agent::start();
    let run = a.exec(&ExecSpec::argv(&["/nonexistent/program"]));
    assert!(
        matches!(run.end, End::Error(AgentErrorCode::SpawnFailed, _)),
        "{:?}",
        run.end
    );
    let run = a.exec(&sh("true").cwd("/nonexistent-dir"));
    assert!(
        matches!(run.end, End::Error(AgentErrorCode::SpawnFailed, _)),
        "{:?}",
        run.end
    );
    a.client.send(Kind::Exec, 0, |w| w.raw(b"garbage"));
    let (h, _) = a.client.recv();
    assert_eq!(h.kind, Kind::Error);
    // The agent is still serving.
    assert_eq!(a.exec(&sh("exit 5")).status().code, 5);
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let mut a = Agent::start();
    let t = Instant::now();
    let run = a.exec(&sh("sleep 30 & echo $!; sleep 30").timeout_ms(300));
    let elapsed = t.elapsed();
    let s = run.status();
    assert_eq!(
        (s.flags & EXIT_TIMED_OUT, s.signal),
        (EXIT_TIMED_OUT, libc::SIGKILL)
    );
    assert!(elapsed < Duration::from_secs(3), "timeout took {elapsed:?}");
    let background: i32 = run.stdout_str().trim().parse().expect("background pid");
    // The background sleep was in the group: it must be dead (gone or a zombie).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{background}/stat")).unwrap_or_default();
        let alive = state
            .split(") ")
            .nth(1)
            .is_some_and(|rest| !rest.starts_with('Z'));
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background process {background} survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn large_output_streams_in_many_frames() {
    let mut a = Agent::start();
    let run = a.exec(&sh("head -c 3000000 /dev/zero | tr '\\0' x; echo done >&2"));
    assert_eq!(run.status().code, 0);
    assert_eq!(run.stdout.len(), 3_000_000);
    assert!(run.stdout.iter().all(|&b| b == b'x'));
    assert_eq!(run.stderr_str(), "done\n");
    assert!(
        run.output_frames >= 3_000_000 / zeroboot_proto::MAX_PAYLOAD,
        "{} frames",
        run.output_frames
    );
}

#[test]
fn stop_output_lets_the_program_finish() {
    let mut a = Agent::start();
    let run = a.exec(&sh("head -c 3000000 /dev/zero; exit 7").stop_after(1));
    assert_eq!(run.status().code, 7);
    assert_eq!(run.output_frames, 1, "no output after the host said stop");
}

#[test]
fn python_runs_in_the_warm_zygote() {
    let mut a = Agent::start();
    let run = a.exec(&ExecSpec::python(
        "import sys\nprint('json' in sys.modules, sys.argv)\nsys.exit(4)",
    ));
    assert_eq!(
        run.stdout_str(),
        "True ['-c']\n",
        "stderr: {}",
        run.stderr_str()
    );
    assert_eq!(run.status().code, 4);
    let run = a.exec(&ExecSpec::python("raise ValueError('boom')"));
    assert_eq!(run.status().code, 1);
    assert!(
        run.stderr_str().contains("ValueError: boom"),
        "{}",
        run.stderr_str()
    );
    let code = "import os, sys\nprint(os.environ['K'], os.getcwd(), sys.stdin.read())";
    let run = a.exec(
        &ExecSpec::python(code)
            .env("K", "v")
            .cwd("/tmp")
            .stdin(b"in"),
    );
    assert_eq!(run.stdout_str(), "v /tmp in\n");
}

#[test]
fn python_timeout_kills_its_group_and_zygote_survives() {
    let mut a = Agent::start();
    let t = Instant::now();
    let run = a.exec(&ExecSpec::python("import time\nwhile True: pass").timeout_ms(300));
    assert_eq!(run.status().flags & EXIT_TIMED_OUT, EXIT_TIMED_OUT);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(a.exec(&ExecSpec::python("print(6*7)")).stdout_str(), "42\n");
}

#[test]
fn every_exec_sees_fresh_randomness() {
    let mut a = Agent::start();
    let code = "import os, random\nprint(os.urandom(16).hex(), random.random())";
    let first = a.exec(&ExecSpec::python(code)).stdout_str();
    let second = a.exec(&ExecSpec::python(code)).stdout_str();
    assert_eq!(first.split_whitespace().count(), 2, "{first}");
    let (f, s): (Vec<_>, Vec<_>) = (
        first.split_whitespace().collect(),
        second.split_whitespace().collect(),
    );
    assert_ne!(f[0], s[0], "os.urandom repeated");
    assert_ne!(f[1], s[1], "random.random repeated");
}

#[test]
fn files_round_trip_with_mode_and_size_cap() {
    let mut a = Agent::start();
    let dir = temp_dir("small");
    let path = dir.join("nested/data.bin");
    let path = path.to_str().unwrap();
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    a.client.write_file(path, 0o600, &data).unwrap();
    assert_eq!(a.client.read_file(path, 1 << 20).unwrap(), data);
    let run = a.exec(&ExecSpec::argv(&["/usr/bin/stat", "-c", "%a", path]));
    assert_eq!(run.stdout_str(), "600\n");
    match a.client.read_file(path, 1000) {
        Err(End::Error(code, _)) => assert_eq!(code, AgentErrorCode::TooLarge),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match a.client.read_file("/nonexistent/file", 10) {
        Err(End::Error(code, _)) => assert_eq!(code, AgentErrorCode::Io),
        other => panic!("expected Io, got {other:?}"),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn multi_mib_files_round_trip_in_chunks() {
    let mut a = Agent::start();
    let dir = temp_dir("large");
    let path = dir.join("big.bin");
    let path = path.to_str().unwrap();
    for len in [0, 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 5 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        a.client.write_file(path, 0o751, &data).unwrap();
        assert_eq!(std::fs::read(path).unwrap().len(), len);
        assert!(
            a.client.read_file(path, 16 << 20).unwrap() == data,
            "{len} bytes"
        );
    }
    let run = a.exec(&ExecSpec::argv(&["/usr/bin/stat", "-c", "%a %s", path]));
    assert_eq!(run.stdout_str(), format!("751 {}\n", 5 << 20));
    // Only what a read allows: the exact size passes, one byte less fails.
    assert_eq!(a.client.read_file(path, 5 << 20).unwrap().len(), 5 << 20);
    match a.client.read_file(path, (5 << 20) - 1) {
        Err(End::Error(code, _)) => assert_eq!(code, AgentErrorCode::TooLarge),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A file whose size stat does not know (/proc) is counted as it is read.
    let status = a.client.read_file("/proc/self/status", 1 << 20).unwrap();
    assert!(String::from_utf8_lossy(&status).contains("Pid:"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Sends one WriteFile chunk by hand; true when the agent answered Done.
fn send_chunk(a: &mut Agent, path: &str, data: &[u8], offset: u64, flags: u32) -> bool {
    a.client.send(Kind::WriteFile, flags, |w| {
        WriteFile {
            path: path.as_bytes(),
            mode: 0o644,
            data,
            offset,
        }
        .encode(w)
    });
    a.client.recv().0.kind == Kind::Done
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn chunked_writes_replace_the_file_atomically_or_not_at_all() {
    let mut a = Agent::start();
    let dir = temp_dir("atomic");
    let target = dir.join("config.txt");
    let path = target.to_str().unwrap();
    a.client.write_file(path, 0o600, b"old contents").unwrap();
    // Mid-transfer the target still holds the old file; the new bytes wait
    // in a temporary beside it.
    assert!(send_chunk(&mut a, path, b"new ", 0, FILE_MORE));
    assert!(send_chunk(
        &mut a,
        path,
        b"contents",
        4,
        FILE_CONTINUE | FILE_MORE
    ));
    assert_eq!(std::fs::read(&target).unwrap(), b"old contents");
    assert_eq!(names_in(&dir).len(), 2, "{:?}", names_in(&dir));
    // Any other request abandons the transfer: the temporary goes, the old file stays.
    assert_eq!(a.exec(&ExecSpec::argv(&["/bin/true"])).status().code, 0);
    assert_eq!(names_in(&dir), ["config.txt"]);
    assert_eq!(std::fs::read(&target).unwrap(), b"old contents");
    // A continuation of the abandoned transfer is refused.
    assert!(!send_chunk(&mut a, path, b"!", 12, FILE_CONTINUE));
    // A chunk out of order fails the transfer and cleans up too.
    assert!(send_chunk(&mut a, path, b"new ", 0, FILE_MORE));
    assert!(!send_chunk(&mut a, path, b"contents", 5, FILE_CONTINUE));
    assert_eq!(names_in(&dir), ["config.txt"]);
    // Completed, the new file replaces the old one in one rename, with its mode.
    assert!(send_chunk(&mut a, path, b"new ", 0, FILE_MORE));
    assert!(send_chunk(&mut a, path, b"contents", 4, FILE_CONTINUE));
    assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
    assert_eq!(names_in(&dir), ["config.txt"]);
    let mode = std::fs::metadata(&target).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o644);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn python_output_streams_line_by_line() {
    let mut a = Agent::start();
    let code = "import sys, time\nprint('first')\nsys.stderr.write('err\\n')\ntime.sleep(0.3)\nprint('second')";
    let run = a.exec(&ExecSpec::python(code));
    assert_eq!(
        (run.stdout_str().as_str(), run.stderr_str().as_str()),
        ("first\nsecond\n", "err\n")
    );
    // "first" and "err" were sent before the sleep; "second" may ride in the Exit.
    assert!(
        run.output_frames >= 2,
        "output was not streamed: {} frames",
        run.output_frames
    );
}

#[test]
fn large_stdin_and_output_flow_together() {
    let mut a = Agent::start();
    let input: Vec<u8> = (0..60_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let run = a.exec(&ExecSpec::argv(&["/bin/cat"]).stdin(&input));
    assert_eq!(run.status().code, 0);
    assert_eq!(run.stdout, input);
}

#[test]
fn a_killed_zygote_is_reported_and_restarted() {
    let mut a = Agent::start();
    let run = a.exec(&ExecSpec::python(
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(30)",
    ));
    assert!(
        matches!(run.end, End::Error(AgentErrorCode::Io, _)),
        "{:?}",
        run.end
    );
    let run = a.exec(&ExecSpec::python("print('back')"));
    assert_eq!(run.stdout_str(), "back\n", "stderr: {}", run.stderr_str());
}
