//! `zeroboot bench`: the figures the README quotes, measured in one run with
//! their repetitions and percentiles. Pooled forks are compared against cold
//! forks (VM created on the request path) in the same run.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeroboot::engine::{CancelToken, Engine, EngineConfig, EngineError, ExecRequest, ForkOptions};

use super::stats::summarize;
use super::{EngineArgs, report};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Fewer repetitions (200 samples, 100 VMs; smaller branch figures): for
    /// slow, emulated hosts.
    #[arg(long)]
    quick: bool,
    /// Samples per latency figure (default 2000, or 200 with --quick).
    #[arg(long)]
    samples: Option<usize>,
    /// Sandboxes created at once for the create/kill/memory figures (default 1000).
    #[arg(long)]
    vms: Option<usize>,
    /// Nodes of the branching search tree (default 1000, or 30 with --quick).
    #[arg(long)]
    tree_nodes: Option<usize>,
    /// Measure a Linux guest instead (hardware KVM only): template build, and
    /// fork + Python exec (default 200 samples, or 20 with --quick).
    #[arg(long, num_args = 2, value_names = ["KERNEL", "INITRAMFS"])]
    linux: Option<Vec<std::path::PathBuf>>,
    /// Measure a template built from a spec (hardware KVM only): its build,
    /// and fork + an exec using its preloads, beside a plain Python exec.
    #[arg(long, value_name = "SPEC", conflicts_with = "linux")]
    linux_spec: Option<std::path::PathBuf>,
}

pub fn main(args: BenchArgs) -> ExitCode {
    let linux_samples = args.samples.unwrap_or(if args.quick { 20 } else { 200 });
    let result = match (args.linux.as_deref(), &args.linux_spec) {
        (Some([kernel, initramfs]), _) => {
            super::bench_linux::run(&args.engine.config(), kernel, initramfs, linux_samples)
        }
        (_, Some(spec)) => super::bench_linux::run_spec(&args.engine.config(), spec, linux_samples),
        _ => run(&args),
    };
    match result {
        Ok(report_json) => {
            if args.json {
                println!("{report_json}");
            } else if args.linux.is_some() {
                super::bench_linux::print_table(&report_json);
            } else if args.linux_spec.is_some() {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report_json).unwrap_or_default()
                );
            } else {
                print_table(&report_json);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

fn echo() -> ExecRequest {
    ExecRequest {
        argv: vec!["echo".into(), "hello".into()],
        ..Default::default()
    }
}

fn exec(engine: &Engine, sandbox: &str, req: &ExecRequest) -> Result<(), EngineError> {
    let r = engine.exec(sandbox, req, &CancelToken::new(), &mut |_, _| {})?;
    if r.exit_code != Some(0) {
        return Err(EngineError::InvalidRequest(format!(
            "bench exec exited with {:?}",
            r.exit_code
        )));
    }
    Ok(())
}

fn timed<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<(T, Duration), EngineError> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed()))
}

fn summary(samples: &[Duration]) -> Value {
    json!(summarize(samples))
}

fn run(args: &BenchArgs) -> Result<Value, EngineError> {
    let samples = args.samples.unwrap_or(if args.quick { 200 } else { 2000 });
    let vms = args.vms.unwrap_or(if args.quick { 100 } else { 1000 });
    let config = args.engine.config();
    let engine = Engine::new(config.clone())?;
    let (tpl, build) = timed(|| engine.load_builtin("bare"))?;
    let t = tpl.template.clone();
    // Let the pool fill before measuring steady-state forks.
    std::thread::sleep(Duration::from_millis(200));

    let (mut fork, mut kill) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples {
        let (f, d) = timed(|| engine.fork(&t))?;
        fork.push(d);
        // Dropped inside: the figure includes handing the VM to recycling.
        let ((), d) = timed(|| engine.kill(&f.sandbox).map(drop))?;
        kill.push(d);
    }

    let one = engine.fork(&t)?;
    let req = echo();
    let mut exec_echo = Vec::with_capacity(samples);
    for _ in 0..samples {
        exec_echo.push(timed(|| exec(&engine, &one.sandbox, &req))?.1);
    }
    let (write_mib, read_mib) = file_round_trips(&engine, &one.sandbox, (samples / 10).max(1))?;
    engine.kill(&one.sandbox)?;

    let mut fork_exec = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (f, d) = timed(|| {
            let f = engine.fork(&t)?;
            exec(&engine, &f.sandbox, &req)?;
            Ok(f)
        })?;
        fork_exec.push(d);
        engine.kill(&f.sandbox)?;
    }

    // Measured next to the in-process figures, before the fleet's teardown
    // (kernel work that outlives the kill) can skew either.
    let rpc = super::bench_rpc::measure(samples, config.pool_size, true)?;
    // The filters' cost: the same through a worker without them, and forks
    // with execs in process with vCPU threads unfiltered.
    let rpc_off = super::bench_rpc::measure(samples, config.pool_size, false)?;
    let fork_exec_off = without_seccomp(&config, samples)?;
    let soak = super::bench_rpc::soak(
        if args.quick { 1000 } else { SOAK_CYCLES },
        SOAK_IN_FLIGHT,
        config.pool_size,
    )?;
    let fleet = fleet(&engine, &t, vms, config.pool_size)?;
    engine.shutdown();
    let cold = cold_forks(&config, (samples / 4).max(1))?;
    let p50 = |v: &[Duration]| summarize(v).map_or(0.0, |s| s.p50);
    let nodes = args
        .tree_nodes
        .unwrap_or(if args.quick { 30 } else { 1000 });
    let branches =
        super::bench_branch::measure(&config, (samples / 10).max(10), nodes, args.quick)?;

    let mut report = json!({
        "kvm": engine.flavor().as_str(),
        "samples": samples,
        "pool_size": config.pool_size,
        "template_build_ms": ms(build),
        "template_mib": tpl.memory_bytes as f64 / (1 << 20) as f64,
        "fork_us": summary(&fork),
        "kill_us": summary(&kill),
        "exec_echo_us": summary(&exec_echo),
        "fork_exec_echo_us": summary(&fork_exec),
        "write_file_1mib_us": summary(&write_mib),
        "read_file_1mib_us": summary(&read_mib),
        "fork_cold_us": summary(&cold),
        "stdio_floor_us": summary(&rpc.floor),
        "stdio_floor_same_cpu_us": summary(&rpc.floor_same_cpu),
        "stdio_floor_cross_cpu_us": rpc.floor_cross_cpu.as_deref().map(summary),
        "rpc_ping_us": summary(&rpc.ping),
        "rpc_fork_us": summary(&rpc.fork),
        "rpc_exec_echo_us": summary(&rpc.exec),
        "rpc_run_echo_us": summary(&rpc.run),
        "rpc_kill_us": summary(&rpc.kill),
        "rpc_ping_after_kill_us": summary(&rpc.ping_after_kill),
        "rpc_overhead_fork_p50_us": p50(&rpc.fork) - p50(&fork),
        "rpc_overhead_exec_p50_us": p50(&rpc.exec) - p50(&exec_echo),
        "rpc_overhead_run_p50_us": p50(&rpc.run) - p50(&fork_exec),
        "rpc_fork_us_no_seccomp": summary(&rpc_off.fork),
        "rpc_exec_echo_us_no_seccomp": summary(&rpc_off.exec),
        "fork_exec_echo_us_no_seccomp": summary(&fork_exec_off),
        "seccomp_cost_p50_us": {
            "rpc_fork": p50(&rpc.fork) - p50(&rpc_off.fork),
            "rpc_exec_echo": p50(&rpc.exec) - p50(&rpc_off.exec),
            "fork_exec_echo": p50(&fork_exec) - p50(&fork_exec_off),
        },
        "soak": soak,
        "memory_budget_mib": engine.memory_budget().0 >> 20,
        "create_vms": vms,
        "create_1000_ms": fleet.create_ms,
        "create_1000_cpu_ms": fleet.create_cpu_ms,
        "create_step_vms": FLEET_STEP,
        "create_step_ms": fleet.step_ms,
        "kill_1000_ms": fleet.kill_ms,
        "private_dirty_kib_idle": fleet.idle_kib,
        "private_dirty_kib_dirty10": fleet.dirty10_kib,
        "kernel_kib_per_vm": fleet.kernel_kib_per_vm,
    });
    if let (Value::Object(all), Value::Object(more)) = (&mut report, branches) {
        all.extend(more);
    }
    Ok(report)
}

/// Writes then reads back a 1 MiB file `n` times (16 chunks each way).
fn file_round_trips(
    engine: &Engine,
    sandbox: &str,
    n: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), EngineError> {
    const MIB: usize = 1 << 20;
    let cancel = CancelToken::new();
    let content: Vec<u8> = (0..MIB).map(|i| i as u8).collect();
    let (mut writes, mut reads) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let data = content.clone();
        writes.push(timed(|| engine.write_file(sandbox, "/bench", data, 0o644, None, &cancel))?.1);
        let (back, d) = timed(|| engine.read_file(sandbox, "/bench", MIB, None, &cancel))?;
        if back != content {
            return Err(EngineError::InvalidRequest(
                "bench file came back different".into(),
            ));
        }
        reads.push(d);
    }
    Ok((writes, reads))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

struct Fleet {
    create_ms: f64,
    create_cpu_ms: f64,
    step_ms: Vec<f64>,
    kill_ms: f64,
    idle_kib: f64,
    dirty10_kib: f64,
    kernel_kib_per_vm: f64,
}

/// What each fleet sandbox may dirty. They run `echo` (16 KiB) and some
/// `dirty 10`: 1000 sandboxes allowed the template's whole 32 MiB would not
/// fit the default memory budget of a 24 GiB host.
const FLEET_MEMORY_LIMIT: u64 = 1 << 20;

/// Sandboxes per step of the fleet's creation: each step's time shows whether
/// creating a VM costs more when more are alive.
const FLEET_STEP: usize = 100;

/// Creates `n` live sandboxes (each runs one echo), measures memory, kills them all.
fn fleet(engine: &Engine, t: &str, n: usize, pool: usize) -> Result<Fleet, EngineError> {
    let before = mem_available_kib();
    let req = echo();
    let mut ids: Vec<String> = Vec::with_capacity(n);
    let mut step_ms = Vec::with_capacity(n.div_ceil(FLEET_STEP));
    let cpu = process_cpu();
    let start = Instant::now();
    while ids.len() < n {
        let step = Instant::now();
        let opts = ForkOptions {
            memory_limit: Some(FLEET_MEMORY_LIMIT),
            ..Default::default()
        };
        let forked = engine.fork_many_with(t, FLEET_STEP.min(n - ids.len()), &opts)?;
        let new: Vec<String> = forked.into_iter().map(|f| f.sandbox).collect();
        parallel(&new, |id| exec(engine, id, &req))?;
        ids.extend(new);
        step_ms.push(ms(step.elapsed()));
    }
    let create = start.elapsed();
    let create_cpu = process_cpu().saturating_sub(cpu);
    let after = mem_available_kib();
    let mean_kib = |ids: &[String]| -> Result<f64, EngineError> {
        let mut total = 0u64;
        for id in ids {
            total += engine.stats(id)?.private_dirty_kib;
        }
        Ok(total as f64 / ids.len().max(1) as f64)
    };
    let idle_kib = mean_kib(&ids)?;
    let dirtied = &ids[..ids.len().min(100)];
    let dirty = ExecRequest {
        argv: vec!["dirty".into(), "10".into()],
        ..Default::default()
    };
    parallel(dirtied, |id| exec(engine, id, &dirty))?;
    let dirty10_kib = mean_kib(dirtied)?;
    let start = Instant::now();
    for id in &ids {
        engine.kill(id)?;
    }
    while zeroboot::vmm::live_vms() > pool {
        std::thread::sleep(Duration::from_millis(1));
    }
    let kill = start.elapsed();
    Ok(Fleet {
        create_ms: ms(create),
        create_cpu_ms: ms(create_cpu),
        step_ms,
        kill_ms: ms(kill),
        idle_kib,
        dirty10_kib,
        kernel_kib_per_vm: (before.saturating_sub(after)) as f64 / n.max(1) as f64,
    })
}

/// Runs `f` over `ids` on every core.
fn parallel(
    ids: &[String],
    f: impl Fn(&str) -> Result<(), EngineError> + Sync,
) -> Result<(), EngineError> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = ids.len().div_ceil(workers).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| s.spawn(|| part.iter().try_for_each(|id| f(id))))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("bench worker panicked"))
    })
}

/// Fork/exec/kill cycles of the soak (issue 11), and how many are under way at once.
const SOAK_CYCLES: usize = 10_000;
const SOAK_IN_FLIGHT: usize = 50;

/// Fork + exec echo + kill, timed to the exec's end, in an engine whose vCPU
/// threads run without seccomp filters (set back on afterwards).
fn without_seccomp(config: &EngineConfig, n: usize) -> Result<Vec<Duration>, EngineError> {
    zeroboot::confine::set_seccomp(false);
    let result = (|| {
        let engine = Engine::new(config.clone())?;
        let t = engine.load_builtin("bare")?.template;
        std::thread::sleep(Duration::from_millis(200));
        let req = echo();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (f, d) = timed(|| {
                let f = engine.fork(&t)?;
                exec(&engine, &f.sandbox, &req)?;
                Ok(f)
            })?;
            out.push(d);
            engine.kill(&f.sandbox)?;
        }
        engine.shutdown();
        Ok(out)
    })();
    zeroboot::confine::set_seccomp(true);
    result
}

/// Forks with the pool disabled: every VM is created on the request path.
fn cold_forks(config: &EngineConfig, n: usize) -> Result<Vec<Duration>, EngineError> {
    let engine = Engine::new(EngineConfig {
        pool_size: 0,
        ..config.clone()
    })?;
    let t = engine.load_builtin("bare")?.template;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (f, d) = timed(|| engine.fork(&t))?;
        out.push(d);
        engine.kill(&f.sandbox)?;
    }
    engine.shutdown();
    Ok(out)
}

/// CPU time (user + system, all threads) this process has used so far, from
/// /proc/self/stat in USER_HZ ticks (100 per second on Linux x86).
fn process_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which may contain spaces: state is
            // field 3, utime 14 and stime 15.
            let rest = s.rsplit_once(')')?.1;
            let mut f = rest.split_whitespace().skip(11);
            let utime: u64 = f.next()?.parse().ok()?;
            let stime: u64 = f.next()?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn print_table(v: &Value) {
    println!(
        "zeroboot bench ({} KVM, {} samples per latency)",
        v["kvm"].as_str().unwrap_or("?"),
        v["samples"]
    );
    for key in [
        "fork_us",
        "fork_cold_us",
        "kill_us",
        "exec_echo_us",
        "fork_exec_echo_us",
        "fork_exec_echo_us_no_seccomp",
        "rpc_fork_us",
        "rpc_fork_us_no_seccomp",
        "rpc_exec_echo_us",
        "rpc_exec_echo_us_no_seccomp",
        "write_file_1mib_us",
        "read_file_1mib_us",
        "stdio_floor_us",
        "stdio_floor_same_cpu_us",
        "stdio_floor_cross_cpu_us",
        "rpc_ping_us",
        "rpc_run_echo_us",
        "rpc_kill_us",
        "rpc_ping_after_kill_us",
        "fork_branch_exec_echo_us",
        "fork_template_exec_echo_us",
        "template_load_us",
    ] {
        let s = &v[key];
        println!(
            "  {key:<22} p50 {:>9} us   p99 {:>9} us   max {:>9} us   (n={})",
            s["p50"], s["p99"], s["max"], s["n"]
        );
    }
    for key in [
        "template_build_ms",
        "create_1000_ms",
        "create_1000_cpu_ms",
        "create_step_ms",
        "kill_1000_ms",
        "private_dirty_kib_idle",
        "private_dirty_kib_dirty10",
        "kernel_kib_per_vm",
        "template_mib",
        "rpc_overhead_fork_p50_us",
        "rpc_overhead_exec_p50_us",
        "rpc_overhead_run_p50_us",
        "seccomp_cost_p50_us",
        "soak",
        "memory_budget_mib",
        "snapshot_us_per_page",
        "snapshot_cold_us_per_page",
        "fork_branch_over_template_p50",
        "branch_kib",
        "branch_rss_kib",
    ] {
        println!("  {key:<26} {}", v[key]);
    }
    for key in ["snapshot_us", "snapshot_cold_us"] {
        for (pages, s) in v[key].as_object().into_iter().flatten() {
            println!(
                "  {key} ({pages:>4} dirtied pages) p50 {:>9} us   p99 {:>9} us   (n={})",
                s["p50"], s["p99"], s["n"]
            );
        }
    }
    for key in ["depth_fork_exec_echo_us", "tree_bench", "template_load"] {
        println!("  {key:<26} {}", v[key]);
    }
    println!(
        "  (create/kill figures are for {} sandboxes)",
        v["create_vms"]
    );
}
