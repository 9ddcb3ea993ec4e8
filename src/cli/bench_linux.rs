//! `zeroboot bench --linux KERNEL INITRAMFS`: the Linux-guest figures — how
//! long a template takes to boot to Ready and be captured, and a fork plus a
//! Python `print(1+1)` exec — with their repetitions and percentiles. Needs
//! hardware KVM (on kvm-pvm the template build is refused at once).

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
    if r.exit_code != Some(0) || r.stdout != b"2\n" {
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
    let tpl = engine.build_template(kernel, initramfs, DEFAULT_LINUX_MEMORY_MIB, None)?;
    let build = t0.elapsed();
    // Let the pool fill before measuring steady-state forks.
    std::thread::sleep(Duration::from_millis(500));
    let req = python_print();

    let mut fork_exec = Vec::with_capacity(samples);
    // What a fork + exec costs in host terms, whatever the speed of the host:
    // pages it made private (copy-on-write faults) and exits to userspace.
    let (mut dirty_kib, mut exits) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples {
        let t = Instant::now();
        let f = engine.fork(&tpl.template)?;
        exec_python(&engine, &f.sandbox, &req)?;
        fork_exec.push(t.elapsed());
        let stats = engine.stats(&f.sandbox)?;
        dirty_kib.push(stats.private_dirty_kib as f64);
        exits.push(stats.exits as f64);
        engine.kill(&f.sandbox)?;
    }
    let one = engine.fork(&tpl.template)?;
    let mut exec = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        exec_python(&engine, &one.sandbox, &req)?;
        exec.push(t.elapsed());
    }
    engine.kill(&one.sandbox)?;
    engine.shutdown();
    Ok(json!({
        "kvm": engine.flavor().as_str(),
        "samples": samples,
        "pool_size": config.pool_size,
        "template_mib": DEFAULT_LINUX_MEMORY_MIB,
        "template_build_ms": build.as_secs_f64() * 1000.0,
        "fork_exec_python_us": summarize(&fork_exec),
        "exec_python_us": summarize(&exec),
        "fork_exec_python_private_kib": summarize_values(dirty_kib),
        "fork_exec_python_exits": summarize_values(exits),
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
    ] {
        let s = &v[key];
        println!(
            "  {key:<28} p50 {:>9} {unit:<5} p99 {:>9} {unit:<5} max {:>9} {unit:<5} (n={})",
            s["p50"], s["p99"], s["max"], s["n"]
        );
    }
}
