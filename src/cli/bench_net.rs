//! The network figures of `zeroboot bench --linux`: how long a guest's TCP
//! connect takes (`net_connect_us`) and how fast it downloads
//! (`net_throughput_mib_s`), both measured by the guest's own clock in a
//! fork with network, against a server the bench starts on 127.0.0.1. The
//! connect waits for the host's own connect to the server (the endpoint
//! holds the guest's SYN until then), so it is the whole path. The guest
//! reaches the host's 127.0.0.1 at its gateway's address, 192.0.2.1.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};

use serde_json::{Value, json};
use zeroboot::agent::NetLink;
use zeroboot::engine::{
    CancelToken, Engine, EngineError, ExecRequest, ForkNetwork, ForkOptions, NetworkSpec, Program,
};

use super::stats::summarize_values;

/// A server on 127.0.0.1: each connection may send a decimal byte count and
/// a newline, and gets that many bytes before the server closes it.
fn server() -> Result<SocketAddr, EngineError> {
    let io = |e: std::io::Error| EngineError::ResourceLimit(format!("bench server: {e}"));
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(&conn);
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut left: usize = line.trim().parse().unwrap_or(0);
                let chunk = vec![b'z'; 256 << 10];
                while left > 0 {
                    let n = left.min(chunk.len());
                    if (&conn).write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    Ok(addr)
}

/// Runs `source` in `sandbox`; its stdout as numbers.
fn measure(engine: &Engine, sandbox: &str, source: String) -> Result<Vec<f64>, EngineError> {
    let req = ExecRequest {
        argv: vec![source],
        program: Program::Python,
        timeout: Some(std::time::Duration::from_secs(600)),
        ..Default::default()
    };
    let r = engine.exec(sandbox, &req, &CancelToken::new(), &mut |_, _| {})?;
    let out = String::from_utf8_lossy(&r.stdout);
    let values: Option<Vec<f64>> = out.split_whitespace().map(|v| v.parse().ok()).collect();
    match values {
        Some(v) if r.exit_code == Some(0) && !v.is_empty() => Ok(v),
        _ => Err(EngineError::InvalidRequest(format!(
            "network bench exec gave exit {:?}, stdout {out:?}, stderr {:?}",
            r.exit_code,
            String::from_utf8_lossy(&r.stderr)
        ))),
    }
}

/// `net_connect_us` over `connects` connects and `net_throughput_mib_s`
/// over `downloads` downloads of `mib` MiB each, in one fork of `template`
/// per link: virtio-net (those keys) and the TAP link (`net_tap_*`), in the
/// same run so they compare.
pub fn run(
    engine: &Engine,
    template: &str,
    connects: usize,
    downloads: usize,
    mib: usize,
) -> Result<Value, EngineError> {
    let addr = server()?;
    let virtio = measure_link(
        engine,
        template,
        addr,
        NetLink::VirtioMmio,
        connects,
        downloads,
        mib,
    )?;
    let tap = measure_link(
        engine,
        template,
        addr,
        NetLink::TapMailbox,
        connects,
        downloads,
        mib,
    )?;
    Ok(json!({
        "net_connect_us": virtio.0,
        "net_throughput_mib_s": virtio.1,
        "net_tap_connect_us": tap.0,
        "net_tap_throughput_mib_s": tap.1,
        "net_download_mib": mib,
        "net_stats": virtio.2,
    }))
}

/// Connect latencies, download rates and counters of one fork on `link`.
fn measure_link(
    engine: &Engine,
    template: &str,
    addr: SocketAddr,
    link: NetLink,
    connects: usize,
    downloads: usize,
    mib: usize,
) -> Result<(Value, Value, Value), EngineError> {
    let port = addr.port();
    let opts = ForkOptions {
        network: ForkNetwork::On(NetworkSpec {
            allow: vec![addr.to_string()],
            link: Some(link),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sb = engine.fork_with(template, &opts)?.sandbox;
    let connect_us = measure(
        engine,
        &sb,
        format!(
            "import socket, time\n\
             ts = []\n\
             for i in range({connects}):\n\
             \x20   t = time.perf_counter()\n\
             \x20   s = socket.create_connection(('192.0.2.1', {port}))\n\
             \x20   ts.append(time.perf_counter() - t)\n\
             \x20   s.close()\n\
             print(' '.join('%.1f' % (t * 1e6) for t in ts))"
        ),
    )?;
    let bytes = mib << 20;
    let mib_s = measure(
        engine,
        &sb,
        format!(
            "import socket, time\n\
             buf = bytearray(1 << 20)\n\
             rates = []\n\
             for i in range({downloads}):\n\
             \x20   s = socket.create_connection(('192.0.2.1', {port}))\n\
             \x20   s.sendall(b'{bytes}\\n')\n\
             \x20   t, n = time.perf_counter(), 0\n\
             \x20   while True:\n\
             \x20       k = s.recv_into(buf)\n\
             \x20       if not k:\n\
             \x20           break\n\
             \x20       n += k\n\
             \x20   rates.append(n / (time.perf_counter() - t) / 1048576)\n\
             \x20   s.close()\n\
             \x20   assert n == {bytes}, n\n\
             print(' '.join('%.3f' % r for r in rates))"
        ),
    )?;
    let net = engine.stats(&sb)?.network;
    engine.kill(&sb)?;
    Ok((
        json!(summarize_values(connect_us)),
        json!(summarize_values(mib_s)),
        json!(net),
    ))
}
