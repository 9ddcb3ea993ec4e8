//! The branch figures of `zeroboot bench`: snapshot cost against the pages a
//! sandbox dirtied, forking a branch against forking a template, what a
//! branch adds to the worker's memory, a chain 100 deep against depth 1, a
//! 1000-node search tree against the full-copy branching it replaces, and
//! loading a saved 256 MiB template. Each comparison is measured in the same
//! run as its baseline.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeroboot::engine::{
    Branching, CancelToken, Engine, EngineConfig, EngineError, ExecRequest, ForkOptions, Unload,
};

use super::stats::summarize;

fn exec(engine: &Engine, sb: &str, argv: &[&str]) -> Result<(), EngineError> {
    let req = ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let r = engine.exec(sb, &req, &CancelToken::new(), &mut |_, _| {})?;
    if r.exit_code != Some(0) {
        return Err(EngineError::InvalidRequest(format!(
            "bench exec {argv:?} exited with {:?}",
            r.exit_code
        )));
    }
    Ok(())
}

fn snapshot(engine: &Engine, sb: &str, how: Branching) -> Result<String, EngineError> {
    Ok(engine
        .snapshot_sandbox(sb, how, &CancelToken::new())?
        .template)
}

fn summary(samples: &[Duration]) -> Value {
    json!(summarize(samples))
}

fn p50(samples: &[Duration]) -> f64 {
    summarize(samples).map_or(0.0, |s| s.p50)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// A "Name:  N kB" field of a /proc file, in KiB.
fn proc_kib(file: &str, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    proc_kib("/proc/self/status", "VmRSS:")
}

/// This process's private memory plus all shared memory on the host, KiB: a
/// full-copy branch lives in a memfd, which VmRSS counts only where mapped.
fn anon_and_shmem_kib() -> u64 {
    proc_kib("/proc/self/status", "RssAnon:") + proc_kib("/proc/meminfo", "Shmem:")
}

/// Every branch figure; `samples` repetitions per latency, `nodes` in the
/// tree; `quick` loads a 64 MiB template instead of 256 MiB, 5 times.
pub fn measure(
    config: &EngineConfig,
    samples: usize,
    nodes: usize,
    quick: bool,
) -> Result<Value, EngineError> {
    let engine = Engine::new(config.clone())?;
    let root = engine.load_builtin("bare")?.template;
    std::thread::sleep(Duration::from_millis(200));

    // Snapshot cost by dirtied pages; the source runs on between snapshots.
    let (mut snapshot_us, mut snapshot_cold_us) = (serde_json::Map::new(), serde_json::Map::new());
    let mut p50s = Vec::new();
    for pages in [10usize, 1000, 5000] {
        let sb = engine.fork(&root)?.sandbox;
        exec(&engine, &sb, &["dirty", &pages.to_string()])?;
        // Warm: the pages of the branch unloaded before are there to reuse
        // (what a worker that keeps branching finds). Cold: none are.
        let (mut times, mut cold) = (Vec::with_capacity(samples), Vec::new());
        for i in 0..samples + samples.div_ceil(10) {
            let out = if i < samples {
                &mut times
            } else {
                engine.release_kept_memory();
                &mut cold
            };
            let t = Instant::now();
            let b = snapshot(&engine, &sb, Branching::Layer)?;
            out.push(t.elapsed());
            engine.unload_template(&b, Unload::IfUnused)?;
            exec(&engine, &sb, &["echo"])?;
        }
        engine.kill(&sb)?;
        p50s.push((pages as f64, p50(&times), p50(&cold)));
        snapshot_us.insert(pages.to_string(), summary(&times));
        snapshot_cold_us.insert(pages.to_string(), summary(&cold));
    }
    let slope = |p: fn(&(f64, f64, f64)) -> f64| {
        let per_page = (p(&p50s[2]) - p(&p50s[0])) / (p50s[2].0 - p50s[0].0);
        (per_page * 1000.0).round() / 1000.0
    };

    // Forking a branch (source dirtied 10 pages) against forking its template.
    let src = engine.fork(&root)?.sandbox;
    exec(&engine, &src, &["dirty", "10"])?;
    let branch = engine.snapshot_sandbox(&src, Branching::Layer, &CancelToken::new())?;
    let (mut from_branch, mut from_root) = (Vec::new(), Vec::new());
    for i in 0..samples * 2 {
        let (t, out) = if i % 2 == 0 {
            (&branch.template, &mut from_branch)
        } else {
            (&root, &mut from_root)
        };
        let start = Instant::now();
        let f = engine.fork(t)?;
        exec(&engine, &f.sandbox, &["echo", "hello"])?;
        out.push(start.elapsed());
        engine.kill(&f.sandbox)?;
    }

    // What a branch adds: its own pages, and the worker's RSS over many.
    // (None of them from pages kept for reuse: each is new memory.)
    let count = 200;
    engine.release_kept_memory();
    let before = rss_kib();
    let mut branches = Vec::with_capacity(count);
    for _ in 0..count {
        branches.push(snapshot(&engine, &src, Branching::Layer)?);
    }
    let branch_rss_kib = rss_kib().saturating_sub(before) as f64 / count as f64;
    for b in &branches {
        engine.unload_template(b, Unload::IfUnused)?;
    }
    engine.unload_template(&branch.template, Unload::IfUnused)?;
    // The first fork of a new branch restores it on the request path.
    let mut first = Vec::with_capacity(samples);
    for _ in 0..samples {
        let b = snapshot(&engine, &src, Branching::Layer)?;
        let start = Instant::now();
        let f = engine.fork(&b)?;
        exec(&engine, &f.sandbox, &["echo", "hello"])?;
        first.push(start.elapsed());
        engine.kill(&f.sandbox)?;
        engine.unload_template(&b, Unload::IfUnused)?;
    }
    engine.kill(&src)?;

    let depth = depth(&engine, &root, samples)?;
    engine.shutdown();
    let tree_layers = tree(config, nodes, Branching::Layer)?;
    let tree_full = tree(config, nodes, Branching::FullCopy)?;
    let load = if quick {
        template_load(config, 64, 5)?
    } else {
        template_load(config, 256, samples.min(50))?
    };

    Ok(json!({
        "snapshot_us": snapshot_us,
        "snapshot_us_per_page": slope(|p| p.1),
        "snapshot_cold_us": snapshot_cold_us,
        "snapshot_cold_us_per_page": slope(|p| p.2),
        "fork_branch_exec_echo_us": summary(&from_branch),
        "fork_template_exec_echo_us": summary(&from_root),
        "fork_branch_first_exec_echo_us": summary(&first),
        "fork_branch_over_template_p50": (p50(&from_branch) / p50(&from_root) * 100.0).round() / 100.0,
        "branch_kib": branch.memory.own_bytes as f64 / 1024.0,
        "branch_rss_kib": (branch_rss_kib * 10.0).round() / 10.0,
        "depth_fork_exec_echo_us": depth,
        "tree_bench": {"layers": tree_layers, "full_copy": tree_full},
        "template_load_us": load.0,
        "template_load": load.1,
    }))
}

/// Fork + exec at depth 1 and at the end of a 100-deep chain, interleaved.
fn depth(engine: &Engine, root: &str, samples: usize) -> Result<Value, EngineError> {
    const DEEP: usize = 100;
    let mut chain = Vec::with_capacity(DEEP);
    let mut sb = engine.fork(root)?.sandbox;
    for level in 1..=DEEP {
        exec(engine, &sb, &["poke", &level.to_string()])?;
        let b = snapshot(engine, &sb, Branching::Layer)?;
        engine.kill(&sb)?;
        sb = engine.fork(&b)?.sandbox;
        chain.push(b);
    }
    engine.kill(&sb)?;
    let (mut one, mut deep) = (Vec::new(), Vec::new());
    for i in 0..samples * 2 {
        let (t, out) = if i % 2 == 0 {
            (&chain[0], &mut one)
        } else {
            (&chain[DEEP - 1], &mut deep)
        };
        let start = Instant::now();
        let f = engine.fork(t)?;
        exec(engine, &f.sandbox, &["echo", "hello"])?;
        out.push(start.elapsed());
        engine.kill(&f.sandbox)?;
    }
    let held = engine
        .list_templates()
        .into_iter()
        .find(|t| &t.template == chain.last().expect("a chain"))
        .map_or(0, |t| t.memory.held_bytes);
    for b in chain.iter().rev() {
        engine.unload_template(b, Unload::IfUnused)?;
    }
    Ok(json!({
        "1": summary(&one),
        "100": summary(&deep),
        "ratio_p50": (p50(&deep) / p50(&one) * 100.0).round() / 100.0,
        "depth_100_held_kib": held / 1024,
    }))
}

/// Private memory each node of the search tree may hold.
const TREE_NODE_MEMORY_LIMIT: u64 = 4 << 20;

/// A search tree of `nodes` nodes, breadth first: each node execs, is
/// branched, its branch forks (up to) two children and is unloaded, and the
/// node is killed. Reports wall time and the worker's peak memory above its
/// start: RSS, and private plus shared memory (full copies live in memfds).
fn tree(config: &EngineConfig, nodes: usize, how: Branching) -> Result<Value, EngineError> {
    let engine = Engine::new(config.clone())?;
    // Each node may dirty 4 MiB, as a platform would bound it: unbounded, a
    // node is charged its template's whole memory and the ~500 nodes alive
    // at once at the tree's widest exceed the default memory budget.
    let node = ForkOptions {
        memory_limit: Some(TREE_NODE_MEMORY_LIMIT),
        ..Default::default()
    };
    let root = engine.load_builtin("bare")?.template;
    std::thread::sleep(Duration::from_millis(200));
    let (base, base_all) = (rss_kib(), anon_and_shmem_kib());
    let (mut peak, mut peak_all) = (base, base_all);
    let start = Instant::now();
    let mut queue = std::collections::VecDeque::from([engine.fork_with(&root, &node)?.sandbox]);
    let mut created = 1;
    let mut n = 0;
    while let Some(sb) = queue.pop_front() {
        n += 1;
        exec(&engine, &sb, &["poke", &n.to_string()])?;
        let b = snapshot(&engine, &sb, how)?;
        for _ in 0..2 {
            if created < nodes {
                queue.push_back(engine.fork_with(&b, &node)?.sandbox);
                created += 1;
            }
        }
        engine.unload_template(&b, Unload::KeepSandboxes)?;
        engine.kill(&sb)?;
        peak = peak.max(rss_kib());
        peak_all = peak_all.max(anon_and_shmem_kib());
    }
    let wall = start.elapsed();
    engine.shutdown();
    Ok(json!({
        "nodes": n,
        "wall_ms": ms(wall),
        "per_node_us": (wall.as_secs_f64() * 1e6 / n.max(1) as f64).round(),
        "peak_rss_kib": peak - base,
        "peak_anon_shmem_kib": peak_all.saturating_sub(base_all),
    }))
}

/// Saves a template of `mib` MiB (3/32 of it dirtied, so the file
/// holds data) and loads it again and again; the first fork of a load is
/// timed too, and what the load adds to the worker's RSS (mapped, not
/// copied: ~nothing).
fn template_load(
    config: &EngineConfig,
    mib: usize,
    samples: usize,
) -> Result<(Value, Value), EngineError> {
    let engine = Engine::new(EngineConfig {
        pool_size: 0,
        ..config.clone()
    })?;
    let big = engine.load_builtin_sized("bare", Some(mib))?;
    let sb = engine.fork(&big.template)?.sandbox;
    exec(&engine, &sb, &["dirty", &(mib * 24).min(6144).to_string()])?;
    let branch = snapshot(&engine, &sb, Branching::Layer)?;
    engine.kill(&sb)?;
    let dir = std::env::temp_dir().join(format!("zeroboot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| EngineError::InvalidRequest(format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("{mib}mib.zbt"));
    let _ = std::fs::remove_file(&path);
    let t = Instant::now();
    let file_bytes = engine.save_template(&branch, &path, &CancelToken::new())?;
    let save = t.elapsed();
    let on_disk =
        std::fs::metadata(&path).map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512);
    let (mut loads, mut first) = (Vec::new(), Vec::new());
    let mut rss_delta = Vec::new();
    for _ in 0..samples {
        let before = rss_kib();
        let t = Instant::now();
        let tpl = engine.load_file(&path, &CancelToken::new())?.template;
        loads.push(t.elapsed());
        rss_delta.push(rss_kib().saturating_sub(before) as f64);
        let t = Instant::now();
        let f = engine.fork(&tpl)?;
        exec(&engine, &f.sandbox, &["echo", "hello"])?;
        first.push(t.elapsed());
        engine.kill(&f.sandbox)?;
        engine.unload_template(&tpl, Unload::IfUnused)?;
    }
    engine.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        summary(&loads),
        json!({
            "memory_mib": big.memory_bytes >> 20,
            "file_bytes": file_bytes,
            "file_disk_kib": on_disk / 1024,
            "save_ms": ms(save),
            "first_fork_exec_echo_us": summary(&first),
            "load_rss_kib": json!(super::stats::summarize_values(rss_delta)),
        }),
    ))
}
