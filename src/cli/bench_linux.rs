//! `zeroboot bench --linux KERNEL INITRAMFS`: the Linux-guest figures — how
//! long a template takes to boot to Ready and be captured, a fork plus a
//! Python `print(1+1)` exec, and a fork's network (`bench_net.rs`) — with
//! their repetitions and percentiles.
//! `zeroboot bench --linux-spec SPEC`: the same for a template built from a
//! spec (image cached or built, boot, preload check, warm-up, capture), and a
//! fork plus an exec that uses the preloaded modules, beside a plain
//! `print(1+1)` fork + exec of the same template. Needs hardware KVM (on
//! kvm-pvm the template build is refused at once).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeroboot::engine::{
    CancelToken, DEFAULT_LINUX_MEMORY_MIB, Engine, EngineConfig, EngineError, ExecRequest, Program,
};

use super::stats::{summarize, summarize_values};

fn python_print() -> ExecRequest {
    ExecRequest {
        argv: vec!["print(1+1)".into()],
        program: Program::Python,
        ..Default::default()
    }
}

fn exec_python(engine: &Engine, sandbox: &str, req: &ExecRequest) -> Result<(), EngineError> {
    let r = engine.exec(sandbox, req, &CancelToken::new(), &mut |_, _| {})?;
    if r.exit_code != Some(0) || !r.stdout.ends_with(b"2\n") {
        return Err(EngineError::InvalidRequest(format!(
            "bench exec gave exit {:?}, stdout {:?}, stderr {:?}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        )));
    }
    Ok(())
}

/// Measures the Linux figures with `samples` repetitions each.
pub fn run(
    config: &EngineConfig,
    kernel: &Path,
    initramfs: &Path,
    samples: usize,
) -> Result<Value, EngineError> {
    let engine = Engine::new(config.clone())?;
    let t0 = Instant::now();
    let tpl = engine.build_template(
        kernel,
        initramfs,
        DEFAULT_LINUX_MEMORY_MIB,
        None,
        &CancelToken::new(),
    )?;
    let build = t0.elapsed();
    // Let the pool fill before measuring steady-state forks.
    std::thread::sleep(Duration::from_millis(500));
    let req = python_print();
    let forks = fork_exec(&engine, &tpl.template, &req, samples)?;
    let one = engine.fork(&tpl.template)?;
    let mut exec = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        exec_python(&engine, &one.sandbox, &req)?;
        exec.push(t.elapsed());
    }
    engine.kill(&one.sandbox)?;
    // Connects as many as the other figures' samples (at least 20); a few
    // 8 MiB downloads.
    let net = super::bench_net::run(
        &engine,
        &tpl.template,
        samples.max(20),
        (samples / 5).clamp(3, 10),
        8,
    )?;
    engine.shutdown();
    let mut report = json!({
        "kvm": engine.flavor().as_str(),
        "samples": samples,
        "pool_size": config.pool_size,
        "template_mib": DEFAULT_LINUX_MEMORY_MIB,
        "template_build_ms": build.as_secs_f64() * 1000.0,
        "fork_exec_python_us": summarize(&forks.times),
        "exec_python_us": summarize(&exec),
        "fork_exec_python_private_kib": summarize_values(forks.private_kib),
        "fork_exec_python_exits": summarize_values(forks.exits),
    });
    if let (Some(r), Value::Object(n)) = (report.as_object_mut(), net) {
        r.extend(n);
    }
    Ok(report)
}

/// Per fork + exec: wall time, private KiB, exits to userspace.
struct Samples {
    times: Vec<Duration>,
    private_kib: Vec<f64>,
    exits: Vec<f64>,
}

/// `samples` times: fork `template`, run `req`, read the sandbox's
/// figures, kill it. Besides the time, what a fork + exec costs in host
/// terms whatever the speed of the host: pages it made private
/// (copy-on-write faults, KiB) and exits to userspace.
fn fork_exec(
    engine: &Engine,
    template: &str,
    req: &ExecRequest,
    samples: usize,
) -> Result<Samples, EngineError> {
    let mut times = Vec::with_capacity(samples);
    let (mut dirty_kib, mut exits) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples {
        let t = Instant::now();
        let f = engine.fork(template)?;
        exec_python(engine, &f.sandbox, req)?;
        times.push(t.elapsed());
        let stats = engine.stats(&f.sandbox)?;
        dirty_kib.push(stats.private_dirty_kib as f64);
        exits.push(stats.exits as f64);
        engine.kill(&f.sandbox)?;
    }
    Ok(Samples {
        times,
        private_kib: dirty_kib,
        exits,
    })
}

/// The `--linux-spec` figures (see the module docs).
pub fn run_spec(config: &EngineConfig, spec: &Path, samples: usize) -> Result<Value, EngineError> {
    let spec = zeroboot::spec::Spec::load(spec)?;
    let engine = Engine::new(config.clone())?;
    let t0 = Instant::now();
    let built =
        engine.build_from_spec(&spec, &Default::default(), &mut |_| {}, &CancelToken::new())?;
    let build = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let template = built.info.template.clone();
    // Code that uses the preloads: importing them is a dictionary lookup
    // in a fork whose zygote imported them before the snapshot.
    let mut code = String::new();
    for module in &spec.python.preload {
        code.push_str(&format!("import {module}\n"));
    }
    code.push_str("print(1+1)\n");
    let preloaded = ExecRequest {
        argv: vec![code],
        program: Program::Python,
        ..Default::default()
    };
    let warm = fork_exec(&engine, &template, &preloaded, samples)?;
    let plain = fork_exec(&engine, &template, &python_print(), samples)?;
    engine.shutdown();
    Ok(json!({
        "kvm": engine.flavor().as_str(),
        "samples": samples,
        "pool_size": config.pool_size,
        "template_mib": spec.memory_mib(),
        "image_cached": built.image_cached,
        "initramfs_bytes": built.manifest.initramfs_bytes,
        "preload": spec.python.preload,
        "spec_template_build_ms": build.as_secs_f64() * 1000.0,
        "fork_exec_preloaded_us": summarize(&warm.times),
        "fork_exec_preloaded_private_kib": summarize_values(warm.private_kib),
        "fork_exec_preloaded_exits": summarize_values(warm.exits),
        "fork_exec_python_us": summarize(&plain.times),
        "fork_exec_python_private_kib": summarize_values(plain.private_kib),
    }))
}

/// The figures as a few lines of text.
pub fn print_table(v: &Value) {
    println!(
        "zeroboot bench --linux ({} KVM, {} samples per latency)",
        v["kvm"].as_str().unwrap_or("?"),
        v["samples"]
    );
    println!(
        "  template_build_ms    {:.1}",
        v["template_build_ms"].as_f64().unwrap_or(0.0)
    );
    for (key, unit) in [
        ("fork_exec_python_us", "us"),
        ("exec_python_us", "us"),
        ("fork_exec_python_private_kib", "KiB"),
        ("fork_exec_python_exits", "exits"),
        ("net_connect_us", "us"),
        ("net_throughput_mib_s", "MiB/s"),
        ("net_tap_connect_us", "us"),
        ("net_tap_throughput_mib_s", "MiB/s"),
    ] {
        let s = &v[key];
        println!(
            "  {key:<28} p50 {:>9} {unit:<5} p99 {:>9} {unit:<5} max {:>9} {unit:<5} (n={})",
            s["p50"], s["p99"], s["max"], s["n"]
        );
    }
}
