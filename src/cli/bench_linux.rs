//! `zeroboot bench --linux KERNEL INITRAMFS`: the Linux-guest figures — how
//! long a template takes to boot to Ready and be captured, a fork plus a
//! Python `print(1+1)` exec, the same as `run_code` in Python and (when the
//! image has Node.js) JavaScript, and a cell in a persistent context — with
//! their repetitions and percentiles, and for each fork + run what it cost
//! whatever the host's speed: pages made private and exits. The baseline in
//! the same run, `fork_run_python_forked_*`, is the same fork + run against a
//! template booted with `zeroboot.spares=0`, whose agent keeps no warm worker
//! and forks one from the zygote per run. Needs hardware KVM (on kvm-pvm the
//! template build is refused at once).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeroboot::agent::{CodeRequest, ExecRequest, Language, Program};
use zeroboot::engine::{
    CodeResult, DEFAULT_LINUX_MEMORY_MIB, Engine, EngineConfig, EngineError, ExecOptions,
};

use super::stats::{Summary, summarize, summarize_values};

fn python_print() -> ExecRequest {
    ExecRequest {
        argv: vec!["print(1+1)".into()],
        program: Some(Program::Python),
        ..Default::default()
    }
}

fn exec_python(engine: &Engine, sandbox: &str, req: &ExecRequest) -> Result<(), EngineError> {
    let r = engine.exec(sandbox, req, &ExecOptions::default(), &mut |_, _| {})?;
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

fn code(language: Language, source: &str, context: Option<&str>) -> CodeRequest {
    CodeRequest {
        language,
        code: source.into(),
        context: context.map(str::to_string),
        env: Vec::new(),
        cwd: String::new(),
        timeout_ms: 0,
    }
}

/// Runs `req` and checks it printed "2\n" and nothing went wrong.
fn run_code(engine: &Engine, sandbox: &str, req: &CodeRequest) -> Result<(), EngineError> {
    let r: CodeResult = engine.run_code(sandbox, req, &ExecOptions::default(), &mut |_, _| {})?;
    if r.exec.exit_code != Some(0) || r.exec.stdout != b"2\n" || r.error.is_some() {
        return Err(EngineError::InvalidRequest(format!(
            "bench run_code gave exit {:?}, stdout {:?}, stderr {:?}, error {:?}",
            r.exec.exit_code,
            String::from_utf8_lossy(&r.exec.stdout),
            String::from_utf8_lossy(&r.exec.stderr),
            r.error
        )));
    }
    Ok(())
}

/// Fork + one call, `samples` times: latency, pages made private, exits.
fn fork_and(
    engine: &Engine,
    template: &str,
    samples: usize,
    call: impl Fn(&str) -> Result<(), EngineError>,
) -> Result<[Option<Summary>; 3], EngineError> {
    let mut latency = Vec::with_capacity(samples);
    // What a fork + call costs in host terms, whatever the speed of the
    // host: pages it made private (copy-on-write faults) and exits to userspace.
    let (mut dirty_kib, mut exits) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples {
        let t = Instant::now();
        let f = engine.fork(template)?;
        call(&f.sandbox)?;
        latency.push(t.elapsed());
        let stats = engine.stats(&f.sandbox)?;
        dirty_kib.push(stats.private_dirty_kib as f64);
        exits.push(stats.exits as f64);
        engine.kill(&f.sandbox)?;
    }
    Ok([
        summarize(&latency),
        summarize_values(dirty_kib),
        summarize_values(exits),
    ])
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
    let [fork_exec, fork_exec_kib, fork_exec_exits] =
        fork_and(&engine, &tpl.template, samples, |sb| {
            exec_python(&engine, sb, &req)
        })?;
    let py = code(Language::Python, "print(1+1)", None);
    let [fork_run, fork_run_kib, fork_run_exits] =
        fork_and(&engine, &tpl.template, samples, |sb| {
            run_code(&engine, sb, &py)
        })?;
    let js = code(Language::JavaScript, "console.log(1+1)", None);
    let probe = engine.fork(&tpl.template)?.sandbox;
    let has_node = match run_code(&engine, &probe, &js) {
        Ok(()) => true,
        Err(EngineError::AgentFailed { .. }) => false, // no Node.js in the image
        Err(e) => return Err(e),
    };
    engine.kill(&probe)?;
    // Null figures when the image has no Node.js.
    let [fork_js, fork_js_kib, fork_js_exits] = if has_node {
        fork_and(&engine, &tpl.template, samples, |sb| {
            run_code(&engine, sb, &js)
        })?
    } else {
        [None, None, None]
    };
    let one = engine.fork(&tpl.template)?;
    let mut exec = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        exec_python(&engine, &one.sandbox, &req)?;
        exec.push(t.elapsed());
    }
    let cell = code(Language::Python, "print(1+1)", Some("bench"));
    run_code(&engine, &one.sandbox, &cell)?; // creates the context
    let mut context = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        run_code(&engine, &one.sandbox, &cell)?;
        context.push(t.elapsed());
    }
    engine.kill(&one.sandbox)?;
    let cmdline = format!("{} zeroboot.spares=0", zeroboot::image::KERNEL_CMDLINE);
    let forked =
        engine.build_template(kernel, initramfs, DEFAULT_LINUX_MEMORY_MIB, Some(&cmdline))?;
    std::thread::sleep(Duration::from_millis(500));
    let [fork_run_forked, fork_run_forked_kib, fork_run_forked_exits] =
        fork_and(&engine, &forked.template, samples, |sb| {
            run_code(&engine, sb, &py)
        })?;
    engine.shutdown();
    Ok(json!({
        "kvm": engine.flavor().as_str(),
        "samples": samples,
        "pool_size": config.pool_size,
        "template_mib": DEFAULT_LINUX_MEMORY_MIB,
        "template_build_ms": build.as_secs_f64() * 1000.0,
        "fork_exec_python_us": fork_exec,
        "exec_python_us": summarize(&exec),
        "fork_exec_python_private_kib": fork_exec_kib,
        "fork_exec_python_exits": fork_exec_exits,
        "fork_run_python_us": fork_run,
        "fork_run_python_private_kib": fork_run_kib,
        "fork_run_python_exits": fork_run_exits,
        "fork_run_python_forked_us": fork_run_forked,
        "fork_run_python_forked_private_kib": fork_run_forked_kib,
        "fork_run_python_forked_exits": fork_run_forked_exits,
        "run_code_context_us": summarize(&context),
        "node": has_node,
        "fork_run_javascript_us": fork_js,
        "fork_run_javascript_private_kib": fork_js_kib,
        "fork_run_javascript_exits": fork_js_exits,
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
        ("fork_run_python_us", "us"),
        ("fork_run_python_private_kib", "KiB"),
        ("fork_run_python_exits", "exits"),
        ("fork_run_python_forked_us", "us"),
        ("fork_run_python_forked_private_kib", "KiB"),
        ("fork_run_python_forked_exits", "exits"),
        ("run_code_context_us", "us"),
        ("fork_run_javascript_us", "us"),
        ("fork_run_javascript_private_kib", "KiB"),
        ("fork_run_javascript_exits", "exits"),
    ] {
        let s = &v[key];
        if s.is_null() {
            continue; // no Node.js in the image
        }
        println!(
            "  {key:<28} p50 {:>9} {unit:<5} p99 {:>9} {unit:<5} max {:>9} {unit:<5} (n={})",
            s["p50"], s["p99"], s["max"], s["n"]
        );
    }
}
