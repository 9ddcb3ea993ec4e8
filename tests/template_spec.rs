//! A template built from a spec, in zeroboot's own VMM on hardware-style KVM
//! (CI: the kvm-lane, nested AMD SVM under QEMU TCG): numpy installed from
//! PyPI and preloaded in the zygote, a non-root user, env defaults. Forks run
//! numpy code and a shell command with their real exit codes, and a fork that
//! uses numpy makes at most 1.5x the pages private that a plain `print(1+1)`
//! fork + exec of the same template makes (the fork did not import numpy
//! again), and at most 2x what one of the default image makes.
//!
//! The spec is `tests/specs/numpy/zeroboot.toml`. Its image is built by
//! `zeroboot::image::spec_image::build`, which finds it in the image cache
//! when the host prepared it (the lane runs `zeroboot image build --spec`
//! before booting L1, which has no network); the plain template is the
//! image of `zeroboot image build` (`ZEROBOOT_LINUX_KERNEL`,
//! `ZEROBOOT_LINUX_INITRAMFS`). Skips on kvm-pvm or without an image
//! unless `ZEROBOOT_REQUIRE_LINUX=1`.

mod support;

use std::path::{Path, PathBuf};

use support::kvm_or_skip;
use zeroboot::engine::{
    CancelToken, Engine, EngineConfig, EngineError, ExecRequest, ExecResult, Program,
};
use zeroboot::spec::Spec;
use zeroboot::vmm::Flavor;

/// Forks measured for each figure.
const SAMPLES: usize = 5;

fn skip(reason: &str) {
    if std::env::var("ZEROBOOT_REQUIRE_LINUX").as_deref() == Ok("1") {
        panic!("template_spec: ZEROBOOT_REQUIRE_LINUX=1 but {reason}");
    }
    eprintln!(
        "SKIPPED template_spec: {reason} (set ZEROBOOT_REQUIRE_LINUX=1 to make this a failure)"
    );
}

fn spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/numpy/zeroboot.toml")
}

fn python(code: &str) -> ExecRequest {
    ExecRequest {
        argv: vec![code.into()],
        program: Program::Python,
        ..Default::default()
    }
}

fn run(engine: &Engine, sandbox: &str, req: &ExecRequest) -> ExecResult {
    engine
        .exec(sandbox, req, &CancelToken::new(), &mut |_, _| {})
        .unwrap()
}

/// Median private KiB of `SAMPLES` fork + exec of `req` on `template`.
fn private_kib(engine: &Engine, template: &str, req: &ExecRequest, want: &str) -> u64 {
    let mut kib: Vec<u64> = (0..SAMPLES)
        .map(|_| {
            let sb = engine.fork(template).unwrap().sandbox;
            let r = run(engine, &sb, req);
            assert_eq!(
                String::from_utf8_lossy(&r.stdout),
                want,
                "stderr: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            let k = engine.stats(&sb).unwrap().private_dirty_kib;
            engine.kill(&sb).unwrap();
            k
        })
        .collect();
    kib.sort_unstable();
    kib[SAMPLES / 2]
}

#[test]
fn a_spec_template_forks_with_numpy_preloaded() {
    if !kvm_or_skip("template_spec") {
        return;
    }
    let config = EngineConfig {
        pool_size: 1,
        ..EngineConfig::default()
    };
    let engine = Engine::new(config).unwrap();
    let spec = Spec::load(&spec_path()).unwrap();
    if engine.flavor() == Flavor::Pvm {
        let e = engine
            .build_from_spec(&spec, &Default::default(), &mut |_| {}, &CancelToken::new())
            .unwrap_err();
        assert!(matches!(e, EngineError::LinuxNeedsHardwareKvm), "{e}");
        skip("kvm-pvm cannot boot Linux guests");
        return;
    }
    let built = match engine.build_from_spec(
        &spec,
        &Default::default(),
        &mut |p| eprintln!("template_spec: {:?} {}", p.phase, p.message),
        &CancelToken::new(),
    ) {
        Ok(b) => b,
        Err(EngineError::Image(e)) => {
            skip(&format!("no spec image: {}", zeroboot::error_chain(&e)));
            return;
        }
        Err(e) => panic!("{}", zeroboot::error_chain(&e)),
    };
    assert_eq!(built.manifest.preload, ["numpy"]);
    let numpy = &built.manifest.python[0];
    assert_eq!(numpy.name, "numpy");
    eprintln!(
        "template_spec: numpy {} (image cached: {})",
        numpy.version, built.image_cached
    );
    let tpl = built.info.template.clone();

    // numpy code, the preload and the defaults, with real exit codes.
    let sb = engine.fork(&tpl).unwrap().sandbox;
    let r = run(
        &engine,
        &sb,
        &python(
            "import sys, os\nwarm = 'numpy' in sys.modules\nimport numpy\n\
             print(warm, numpy.arange(4).sum(), os.getuid(), os.environ['GREETING'])\nsys.exit(5)",
        ),
    );
    assert_eq!(
        (String::from_utf8_lossy(&r.stdout).as_ref(), r.exit_code),
        ("True 6 1000 hi\n", Some(5)),
        "stderr: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let sh = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), "echo $((1+2)) >&2; exit 3".into()],
        ..Default::default()
    };
    let r = run(&engine, &sb, &sh);
    assert_eq!((r.stderr.as_slice(), r.exit_code), (&b"3\n"[..], Some(3)));
    // The warm-up ran before the snapshot: its file is in every fork.
    let r = run(&engine, &sb, &python("print(open('/tmp/warm').read())"));
    assert_eq!(String::from_utf8_lossy(&r.stdout), "warm\n\n");
    engine.kill(&sb).unwrap();

    // The first Python run of a fresh fork runs in the agent's spare worker,
    // started at boot, so before the warm-up's shell: the preload check (a
    // Python run) did not use it up in the fork that became the template.
    let sb = engine.fork(&tpl).unwrap().sandbox;
    let r = run(
        &engine,
        &sb,
        &python("import os\nprint(os.getpid(), open('/tmp/warmup-pid').read().strip())"),
    );
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    let pids: Vec<u32> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        pids.len() == 2 && pids[0] < pids[1],
        "first run's pid, warm-up shell's pid: {out:?} (stderr {})",
        String::from_utf8_lossy(&r.stderr)
    );
    engine.kill(&sb).unwrap();

    // A fork using the preloaded numpy costs about what a plain run in a
    // fork of the same template costs: it did not import numpy again
    // (which makes megabytes private). Same template, so the comparison
    // does not also carry how two boots' memory happened to be laid out.
    let preloaded = private_kib(
        &engine,
        &tpl,
        &python("import numpy\nprint(int(numpy.ones(2).sum()))"),
        "2\n",
    );
    let plain = private_kib(&engine, &tpl, &python("print(1+1)"), "2\n");
    // And the default image's plain fork, for scale: numpy in the template
    // keeps a fork's cost near it.
    let default = match (
        std::env::var_os("ZEROBOOT_LINUX_KERNEL"),
        std::env::var_os("ZEROBOOT_LINUX_INITRAMFS"),
    ) {
        (Some(k), Some(i)) => {
            let base = engine
                .build_template(Path::new(&k), Path::new(&i), 512, None, &CancelToken::new())
                .unwrap();
            Some(private_kib(
                &engine,
                &base.template,
                &python("print(1+1)"),
                "2\n",
            ))
        }
        _ => None,
    };
    eprintln!(
        "template_spec: private KiB per fork + exec, median of {SAMPLES}: numpy used {preloaded}, \
         print(1+1) {plain}, print(1+1) on the default image {default:?}"
    );
    assert!(
        preloaded * 2 <= plain * 3,
        "a fork using preloaded numpy made {preloaded} KiB private, over 1.5x a plain run's {plain} KiB"
    );
    if let Some(default) = default {
        assert!(
            preloaded <= default * 2,
            "a fork using preloaded numpy made {preloaded} KiB private, over 2x the default image's plain fork ({default} KiB)"
        );
    }
    engine.shutdown();
}
