//! `zeroboot bench --linux KERNEL INITRAMFS`: the Linux-guest figures — how
//! long a template takes to boot to Ready and be captured, a fork plus a
//! Python `print(1+1)` exec, the same as `run_code` in Python and (when the
//! image has Node.js) JavaScript, and a cell in a persistent context — with
//! their repetitions and percentiles, and for each fork + run what it cost
//! whatever the host's speed: pages made private and exits. The baseline in
//! the same run, `fork_run_python_forked_*`, is the same fork + run against a
//! template booted with `zeroboot.spares=0`, whose agent keeps no warm worker
//! and forks one from the zygote per run. And a fork's network
//! (`bench_net.rs`).
//! `zeroboot bench --linux-spec SPEC`: the same for a template built from a
//! spec (image cached or built, boot, preload check, warm-up, capture), a
//! fork plus an exec that uses the preloaded modules beside a plain
//! `print(1+1)` fork + exec of the same template, and the `run_code` figures
//! (JavaScript among them when the spec brings Node.js).
//! Both need hardware KVM (on kvm-pvm the template build is refused at once).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use zeroboot::engine::{
    CancelToken, CodeRequest, CodeResult, DEFAULT_LINUX_MEMORY_MIB, Engine, EngineConfig,
    EngineError, ExecRequest, Language, Program,
};

use super::stats::{Summary, summarize, summarize_values};

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

fn code(language: Language, source: &str, context: Option<&str>) -> CodeRequest {
    CodeRequest {
        language,
        code: source.into(),
        context: context.map(str::to_string),
        env: Vec::new(),
        cwd: String::new(),
        timeout: None,
        output_cap: None,
    }
}

/// Runs `req` and checks it printed "2\n" and nothing went wrong.
fn run_code(engine: &Engine, sandbox: &str, req: &CodeRequest) -> Result<(), EngineError> {
    let r: CodeResult = engine.run_code(sandbox, req, &CancelToken::new(), &mut |_, _| {})?;
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

/// Fork + one call, `samples` times: latency, pages made private (right
/// after the call, and once the sandbox's idle trim gave back what the call
/// left unchanged), exits.
fn fork_and(
    engine: &Engine,
    template: &str,
    samples: usize,
    call: impl Fn(&str) -> Result<(), EngineError>,
) -> Result<ForkAnd, EngineError> {
    let mut latency = Vec::with_capacity(samples);
    // What a fork + call costs in host terms, whatever the speed of the
    // host: pages it made private (copy-on-write faults) and exits to userspace.
    let (mut untrimmed, mut trimmed) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    let mut exits = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let f = engine.fork(template)?;
        call(&f.sandbox)?;
        latency.push(t.elapsed());
        let stats = engine.stats(&f.sandbox)?;
        untrimmed.push(stats.private_dirty_kib as f64);
        exits.push(stats.exits as f64);
        engine.trim(&f.sandbox)?;
        trimmed.push(engine.stats(&f.sandbox)?.private_dirty_kib as f64);
        engine.kill(&f.sandbox)?;
    }
    Ok(ForkAnd {
        us: summarize(&latency),
        private_kib: summarize_values(trimmed),
        untrimmed_private_kib: summarize_values(untrimmed),
        exits: summarize_values(exits),
    })
}

/// What [`fork_and`] measured.
#[derive(Default)]
struct ForkAnd {
    us: Option<Summary>,
    private_kib: Option<Summary>,
    untrimmed_private_kib: Option<Summary>,
    exits: Option<Summary>,
}

/// Puts a fork + call's figures under `{prefix}_us`, `{prefix}_private_kib`
/// (what the sandbox holds once idle), `{prefix}_untrimmed_private_kib`
/// (right after the call) and `{prefix}_exits`.
fn put(out: &mut Map<String, Value>, prefix: &str, f: ForkAnd) {
    out.insert(format!("{prefix}_us"), json!(f.us));
    out.insert(format!("{prefix}_private_kib"), json!(f.private_kib));
    out.insert(
        format!("{prefix}_untrimmed_private_kib"),
        json!(f.untrimmed_private_kib),
    );
    out.insert(format!("{prefix}_exits"), json!(f.exits));
}

/// The `run_code` figures of `template`: fork + run in Python and (when the
/// image has Node.js; else null) JavaScript, and a cell in a context.
fn code_figures(
    engine: &Engine,
    template: &str,
    samples: usize,
    out: &mut Map<String, Value>,
) -> Result<(), EngineError> {
    let py = code(Language::Python, "print(1+1)", None);
    let fork_run = fork_and(engine, template, samples, |sb| run_code(engine, sb, &py))?;
    put(out, "fork_run_python", fork_run);
    let js = code(Language::JavaScript, "console.log(1+1)", None);
    let probe = engine.fork(template)?.sandbox;
    let has_node = match run_code(engine, &probe, &js) {
        Ok(()) => true,
        Err(EngineError::AgentFailed { .. }) => false, // no Node.js in the image
        Err(e) => return Err(e),
    };
    engine.kill(&probe)?;
    let fork_js = if has_node {
        fork_and(engine, template, samples, |sb| run_code(engine, sb, &js))?
    } else {
        ForkAnd::default()
    };
    out.insert("node".into(), json!(has_node));
    put(out, "fork_run_javascript", fork_js);
    let one = engine.fork(template)?;
    let cell = code(Language::Python, "print(1+1)", Some("bench"));
    run_code(engine, &one.sandbox, &cell)?; // creates the context
    let mut context = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        run_code(engine, &one.sandbox, &cell)?;
        context.push(t.elapsed());
    }
    engine.kill(&one.sandbox)?;
    out.insert("run_code_context_us".into(), json!(summarize(&context)));
    Ok(())
}

/// The bench's engine: no idle trims, so no figure taken right after a call
/// races one; the trimmed figures come from [`Engine::trim`].
fn bench_engine(config: &EngineConfig) -> Result<Engine, EngineError> {
    Engine::new(EngineConfig {
        trim_idle_ms: None,
        ..config.clone()
    })
}

/// Measures the Linux figures with `samples` repetitions each.
pub fn run(
    config: &EngineConfig,
    kernel: &Path,
    initramfs: &Path,
    samples: usize,
) -> Result<Value, EngineError> {
    let engine = bench_engine(config)?;
    let cancel = CancelToken::new();
    let t0 = Instant::now();
    let tpl = engine.build_template(kernel, initramfs, DEFAULT_LINUX_MEMORY_MIB, None, &cancel)?;
    let build = t0.elapsed();
    // Let the pool fill before measuring steady-state forks.
    std::thread::sleep(Duration::from_millis(500));
    let req = python_print();
    let mut out = Map::new();
    let fork_exec = fork_and(&engine, &tpl.template, samples, |sb| {
        exec_python(&engine, sb, &req)
    })?;
    put(&mut out, "fork_exec_python", fork_exec);
    let one = engine.fork(&tpl.template)?;
    let mut exec = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        exec_python(&engine, &one.sandbox, &req)?;
        exec.push(t.elapsed());
    }
    engine.kill(&one.sandbox)?;
    out.insert("exec_python_us".into(), json!(summarize(&exec)));
    code_figures(&engine, &tpl.template, samples, &mut out)?;
    // Connects as many as the other figures' samples (at least 20); a few
    // 8 MiB downloads.
    let net = super::bench_net::run(
        &engine,
        &tpl.template,
        samples.max(20),
        (samples / 5).clamp(3, 10),
        8,
    )?;
    if let Value::Object(n) = net {
        out.extend(n);
    }
    let cmdline = format!("{} zeroboot.spares=0", zeroboot::image::KERNEL_CMDLINE);
    let forked = engine.build_template(
        kernel,
        initramfs,
        DEFAULT_LINUX_MEMORY_MIB,
        Some(&cmdline),
        &cancel,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let py = code(Language::Python, "print(1+1)", None);
    let forked_run = fork_and(&engine, &forked.template, samples, |sb| {
        run_code(&engine, sb, &py)
    })?;
    put(&mut out, "fork_run_python_forked", forked_run);
    engine.shutdown();
    out.insert("kvm".into(), json!(engine.flavor().as_str()));
    out.insert("samples".into(), json!(samples));
    out.insert("pool_size".into(), json!(config.pool_size));
    out.insert("template_mib".into(), json!(DEFAULT_LINUX_MEMORY_MIB));
    out.insert(
        "template_build_ms".into(),
        json!(build.as_secs_f64() * 1000.0),
    );
    Ok(Value::Object(out))
}

/// The `--linux-spec` figures (see the module docs).
pub fn run_spec(config: &EngineConfig, spec: &Path, samples: usize) -> Result<Value, EngineError> {
    let spec = zeroboot::spec::Spec::load(spec)?;
    let engine = bench_engine(config)?;
    let t0 = Instant::now();
    let built =
        engine.build_from_spec(&spec, &Default::default(), &mut |_| {}, &CancelToken::new())?;
    let build = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let template = built.info.template.clone();
    // Code that uses the preloads: importing them is a dictionary lookup
    // in a fork whose zygote imported them before the snapshot.
    let mut source = String::new();
    for module in &spec.python.preload {
        source.push_str(&format!("import {module}\n"));
    }
    source.push_str("print(1+1)\n");
    let preloaded = ExecRequest {
        argv: vec![source],
        program: Program::Python,
        ..Default::default()
    };
    let mut out = Map::new();
    let warm = fork_and(&engine, &template, samples, |sb| {
        exec_python(&engine, sb, &preloaded)
    })?;
    put(&mut out, "fork_exec_preloaded", warm);
    let plain = fork_and(&engine, &template, samples, |sb| {
        exec_python(&engine, sb, &python_print())
    })?;
    put(&mut out, "fork_exec_python", plain);
    code_figures(&engine, &template, samples, &mut out)?;
    engine.shutdown();
    out.insert("kvm".into(), json!(engine.flavor().as_str()));
    out.insert("samples".into(), json!(samples));
    out.insert("pool_size".into(), json!(config.pool_size));
    out.insert("template_mib".into(), json!(spec.memory_mib()));
    out.insert("image_cached".into(), json!(built.image_cached));
    out.insert(
        "initramfs_bytes".into(),
        json!(built.manifest.initramfs_bytes),
    );
    out.insert("preload".into(), json!(spec.python.preload));
    out.insert(
        "spec_template_build_ms".into(),
        json!(build.as_secs_f64() * 1000.0),
    );
    Ok(Value::Object(out))
}

/// The figures as a few lines of text.
pub fn print_table(v: &Value) {
    println!(
        "zeroboot bench --linux ({} KVM, {} samples per latency)",
        v["kvm"].as_str().unwrap_or("?"),
        v["samples"]
    );
    for key in ["template_build_ms", "spec_template_build_ms"] {
        if let Some(ms) = v[key].as_f64() {
            println!("  {key:<28} {ms:.1}");
        }
    }
    for (key, unit) in [
        ("fork_exec_python_us", "us"),
        ("exec_python_us", "us"),
        ("fork_exec_python_private_kib", "KiB"),
        ("fork_exec_python_untrimmed_private_kib", "KiB"),
        ("fork_exec_python_exits", "exits"),
        ("fork_exec_preloaded_us", "us"),
        ("fork_exec_preloaded_private_kib", "KiB"),
        ("fork_exec_preloaded_untrimmed_private_kib", "KiB"),
        ("fork_exec_preloaded_exits", "exits"),
        ("fork_run_python_us", "us"),
        ("fork_run_python_private_kib", "KiB"),
        ("fork_run_python_untrimmed_private_kib", "KiB"),
        ("fork_run_python_exits", "exits"),
        ("fork_run_python_forked_us", "us"),
        ("fork_run_python_forked_private_kib", "KiB"),
        ("fork_run_python_forked_untrimmed_private_kib", "KiB"),
        ("fork_run_python_forked_exits", "exits"),
        ("run_code_context_us", "us"),
        ("fork_run_javascript_us", "us"),
        ("fork_run_javascript_private_kib", "KiB"),
        ("fork_run_javascript_untrimmed_private_kib", "KiB"),
        ("fork_run_javascript_exits", "exits"),
        ("net_connect_us", "us"),
        ("net_throughput_mib_s", "MiB/s"),
        ("net_tap_connect_us", "us"),
        ("net_tap_throughput_mib_s", "MiB/s"),
    ] {
        let s = &v[key];
        if s.is_null() {
            continue; // not measured: no Node.js, or the other command's figure
        }
        println!(
            "  {key:<34} p50 {:>9} {unit:<5} p99 {:>9} {unit:<5} max {:>9} {unit:<5} (n={})",
            s["p50"], s["p99"], s["max"], s["n"]
        );
    }
}
