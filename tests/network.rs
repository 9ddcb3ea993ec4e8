//! Networking through the real worker (`zeroboot serve`, JSON-RPC).
//!
//! - `network_params_are_checked` runs anywhere with KVM (bare guest): bad
//!   policies are refused naming the entry, `false` means no network, and
//!   `sandbox.stats` reports network counters only for sandboxes with network.
//! - `linux_forks_reach_only_what_their_policy_allows` needs a Linux guest
//!   (hardware KVM: in CI, the kvm-lane). Servers the test starts on
//!   127.0.0.1 play the internet (a guest reaches the host's loopback at its
//!   gateway's address, 192.0.2.1): a fork fetches a page from the one it may
//!   reach; another port, the metadata address and names outside the policy
//!   are refused; two forks fetch at the same time without mixing; a fork of
//!   a sandbox that held a connection open sees that connection reset; the
//!   counters add up; and the worker never listens on a socket.

#[path = "common/rpc_client.rs"]
mod rpc_client;
#[path = "common/rpc_schema.rs"]
mod rpc_schema;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use rpc_client::{Framing, Worker, kvm_or_skip};
use serde_json::{Value, json};
use support::linux::{image, skip};

#[test]
fn network_params_are_checked() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    for (network, kind, needle) in [
        (
            json!({"allow": ["300.1.1.1:80"]}),
            "network_policy",
            "300.1.1.1:80",
        ),
        (json!({"deny": ["[::1]:22"]}), "network_policy", "IPv6"),
        (json!({"allow": ["a b"]}), "network_policy", "a b"),
        (json!({"allow": ["x.com:0"]}), "network_policy", "port"),
        (
            json!({"max_connections": 0}),
            "invalid_request",
            "max_connections",
        ),
    ] {
        let e = w.err_unchecked("sandbox.fork", json!({"template": tpl, "network": network}));
        assert_eq!(e["code"], -32602, "{e}");
        assert_eq!(e["data"]["kind"], kind, "{e}");
        assert!(e["message"].as_str().unwrap().contains(needle), "{e}");
    }
    for network in [json!(true), json!("on"), json!({"allow": [], "bogus": 1})] {
        let e = w.err_unchecked("sandbox.fork", json!({"template": tpl, "network": network}));
        assert_eq!(e["data"]["kind"], "invalid_params", "{e}");
    }
    let plain = w.ok("sandbox.fork", json!({"template": tpl, "network": false}));
    let stats = w.ok("sandbox.stats", json!({"sandbox": plain["sandbox"]}));
    assert_eq!(stats["network"], Value::Null);
    let net = w.ok(
        "sandbox.fork",
        json!({"template": tpl, "network": {"allow": ["*.example.com:443"]}}),
    );
    let stats = w.ok("sandbox.stats", json!({"sandbox": net["sandbox"]}));
    assert_eq!(stats["network"]["connections"], 0, "{stats}");
    // The bare guest has no network stack: its first request says so.
    let e = w.err(
        "sandbox.exec",
        json!({"sandbox": net["sandbox"], "argv": ["echo", "hi"]}),
    );
    assert_eq!(e["data"]["kind"], "agent_failed", "{e}");
    assert_listens_nowhere(w.pid());
    w.shutdown();
}

/// Fails if process `pid` has a TCP socket in LISTEN state or an unconnected
/// bound UDP socket.
fn assert_listens_nowhere(pid: u32) {
    let mut inodes = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy().into_owned();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.push(inode.to_string());
            }
        }
    }
    // (file, state that means "waits for anyone": TCP LISTEN, UDP unconnected)
    for (table, state) in [("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == state && inodes.iter().any(|i| i == cols[9]) {
                panic!("the worker listens: {table} {line}");
            }
        }
    }
}

/// A server on 127.0.0.1: `GET /bytes/N` answers N bytes, `GET /hold` says
/// "hello" and then echoes lines for as long as the peer stays, any other
/// path answers "conn K path P" (K counts connections).
fn web_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || serve(n, conn));
        }
    });
    addr
}

fn serve(n: usize, conn: TcpStream) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    // The rest of the header, up to the blank line.
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => return,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut out = conn;
    if path == "/hold" {
        let _ = out.write_all(b"hello\n");
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if out.write_all(format!("{line}\n").as_bytes()).is_err() {
                return;
            }
        }
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let _ = out.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
        let chunk = vec![b'z'; 64 << 10];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            if out.write_all(&chunk[..k]).is_err() {
                return;
            }
            left -= k;
        }
    } else {
        let _ = write!(out, "HTTP/1.0 200 OK\r\n\r\nconn {n} path {path}\n");
    }
}

/// A server that accepts and says "no" (the test must never reach it).
fn other_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"you should not be here\n");
        }
    });
    addr
}

/// Python helpers the guest programs start with. `HOST` is where a guest
/// reaches the host's 127.0.0.1: its gateway.
const PRELUDE: &str = r#"
import socket, time, os
HOST = '192.0.2.1'
def get(host, port, path):
    s = socket.create_connection((host, port), timeout=20)
    s.sendall(b"GET " + path.encode() + b" HTTP/1.0\r\nHost: t\r\n\r\n")
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    return data.split(b"\r\n\r\n", 1)[1]
def attempt(host, port):
    try:
        socket.create_connection((host, port), timeout=20).close()
        return "connected"
    except ConnectionRefusedError:
        return "refused"
    except socket.gaierror:
        return "no such name"
    except OSError as e:
        return "error " + str(e)
"#;

fn python(w: &mut Worker, sandbox: &str, body: &str) -> String {
    let r = w.ok(
        "sandbox.exec",
        json!({
            "sandbox": sandbox,
            "argv": [format!("{PRELUDE}\n{body}")],
            "program": "python",
            "timeout_ms": 60_000,
        }),
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    r["stdout"].as_str().unwrap().to_string()
}

fn net_stats(w: &mut Worker, sandbox: &str) -> Value {
    w.ok("sandbox.stats", json!({"sandbox": sandbox}))["network"].clone()
}

#[test]
fn linux_forks_reach_only_what_their_policy_allows() {
    const TEST: &str = "linux_forks_reach_only_what_their_policy_allows";
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let info = w.ok("worker.info", json!({}));
    if info["kvm"]["flavor"] == "pvm" {
        skip(
            TEST,
            "/dev/kvm is kvm-pvm, which cannot boot a stock kernel (run it in tests/kvm-lane)",
        );
        return;
    }
    let Some((kernel, initramfs)) = image(TEST) else {
        return;
    };
    let (web, other) = (web_server(), other_server());
    let tpl = w.ok(
        "template.build",
        json!({"kernel": kernel, "initramfs": initramfs}),
    )["template"]
        .as_str()
        .unwrap()
        .to_string();
    let allow_web = json!({"allow": [format!("127.0.0.1:{}", web.port())]});
    let fork = |w: &mut Worker, tpl: &str, network: &Value| {
        w.ok("sandbox.fork", json!({"template": tpl, "network": network}))["sandbox"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // An allowed server: the page arrives whole.
    let a = fork(&mut w, &tpl, &allow_web);
    let page = python(
        &mut w,
        &a,
        &format!("print(get(HOST, {}, '/a').decode())", web.port()),
    );
    assert!(
        page.starts_with("conn ") && page.trim_end().ends_with("path /a"),
        "{page}"
    );
    let s = net_stats(&mut w, &a);
    assert_eq!(
        (s["connections"].as_u64(), s["refused"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert!(
        s["bytes_received"].as_u64().unwrap() >= page.len() as u64,
        "{s}"
    );

    // Another port, the metadata service, a name outside the policy: refused.
    let out = python(
        &mut w,
        &a,
        &format!(
            "print(attempt(HOST, {}), attempt('169.254.169.254', 80), attempt('example.com', 443), sep='|')",
            other.port()
        ),
    );
    assert_eq!(out.trim(), "refused|refused|no such name");
    let s = net_stats(&mut w, &a);
    assert!(s["refused"].as_u64().unwrap() >= 3, "{s}");
    assert_eq!(s["connections"], 1, "{s}");

    // A fork without network has no interface but loopback.
    let plain = fork(&mut w, &tpl, &json!(false));
    let ifaces = python(
        &mut w,
        &plain,
        "print(sorted(os.listdir('/sys/class/net')))",
    );
    assert_eq!(
        ifaces.trim(),
        "['lo']",
        "a fork without network has no network device"
    );
    assert_eq!(net_stats(&mut w, &plain), Value::Null);

    // Two forks, same guest address and MAC, fetching at the same time.
    let (b, c) = (
        fork(&mut w, &tpl, &allow_web),
        fork(&mut w, &tpl, &allow_web),
    );
    let loop_src = |tag: &str| {
        format!(
            "ok = 0\nfor i in range(20):\n    body = get(HOST, {}, '/{tag}/%d' % i).decode()\n    assert body.rstrip().endswith('path /{tag}/%d' % i), body\n    ok += 1\nprint(ok)",
            web.port()
        )
    };
    let ids: Vec<Value> = [(&b, "b"), (&c, "c")]
        .iter()
        .map(|(sb, tag)| {
            w.request(
                "sandbox.exec",
                json!({"sandbox": sb, "argv": [format!("{PRELUDE}\n{}", loop_src(tag))],
                       "program": "python", "timeout_ms": 120_000}),
            )
        })
        .collect();
    for id in &ids {
        let r = w.response(id);
        assert_eq!(r["result"]["exit_code"], 0, "{r}");
        assert_eq!(r["result"]["stdout"], "20\n", "{r}");
    }
    for sb in [&b, &c] {
        let s = net_stats(&mut w, sb);
        assert_eq!(s["connections"], 20, "{s}");
    }

    // A sandbox holds a connection open in a background process; a fork of
    // its snapshot finds that connection reset, the sandbox itself does not.
    let d = fork(&mut w, &tpl, &allow_web);
    let held = format!(
        r#"
def note(text):
    open('/tmp/held.new', 'w').write(text)
    os.rename('/tmp/held.new', '/tmp/held')
if os.fork() == 0:
    os.setsid()
    s = socket.create_connection((HOST, {port}), timeout=20)
    s.sendall(b"GET /hold HTTP/1.0\r\n\r\n")
    f = s.makefile('rwb', buffering=0)
    note(f.readline().decode())
    n = 0
    while True:
        time.sleep(0.05)
        n += 1
        try:
            f.write(b"ping %d\n" % n)
            line = f.readline()
            if not line:
                raise OSError("closed by the peer")
            note('alive ' + line.decode())
        except OSError as e:
            note('reset %s\n' % e)
            os._exit(0)
while not os.path.exists('/tmp/held'):
    time.sleep(0.01)
print(open('/tmp/held').read().strip())
"#,
        port = web.port()
    );
    assert_eq!(python(&mut w, &d, &held).trim(), "hello");
    let branch = w.ok("sandbox.snapshot", json!({"sandbox": d}))["template"]
        .as_str()
        .unwrap()
        .to_string();
    let e = fork(&mut w, &branch, &allow_web);
    let watch = "time.sleep(2)\nprint(open('/tmp/held').read().strip())";
    let child_view = python(&mut w, &e, watch);
    assert!(
        child_view.starts_with("reset"),
        "the fork's copy: {child_view}"
    );
    let parent_view = python(&mut w, &d, watch);
    assert!(
        parent_view.starts_with("alive ping"),
        "the original: {parent_view}"
    );
    assert_eq!(net_stats(&mut w, &e)["connections"], 0);

    assert_listens_nowhere(w.pid());
    w.shutdown();
}
