//! `run_code` on Linux guests in zeroboot's own VMM (hardware KVM: in CI the
//! kvm-lane, nested AMD SVM under QEMU TCG): each language the image has,
//! results and errors, persistent contexts and their branching through a
//! snapshot, fresh userspace randomness in every fork and branch, deadlines
//! that stop busy loops and leave the sandbox usable, the one-shot form.
//!
//! The template is the lane's spec (`tests/specs/numpy/zeroboot.toml`:
//! numpy, Debian's nodejs, the full standard library), or the default image
//! when that spec's image cannot be had. Languages and libraries the image
//! lacks (Node.js, a shell, numpy, OpenSSL's `ssl` module) are skipped with a
//! message, unless `ZEROBOOT_REQUIRE_RUNTIMES` names them (space-separated)
//! as required: the lane names them all.

mod support;

use std::time::{Duration, Instant};

use std::sync::{Mutex, MutexGuard};
use support::kvm_or_skip;
use support::linux::{chain, spec_template};

use zeroboot::engine::{
    Branching, CancelToken, CodeRequest, CodeResult, Engine, ForkOptions, Language,
};

/// The in-guest deadline of a run that is not about deadlines (emulated
/// time is slow).
const LONG: Duration = Duration::from_secs(120);

/// The tests boot 1 GiB Linux guests, one at a time: each engine's memory
/// budget is taken from what the machine has free when it starts, so
/// engines running side by side would each count on the same memory.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fork that may dirty 256 MiB: the budget charges a fork its limit
/// (default: the template's 1 GiB), and these runs need a few MiB.
fn fork(engine: &Engine, template: &str) -> String {
    let opts = ForkOptions {
        memory_limit: Some(256 << 20),
        ..Default::default()
    };
    engine.fork_with(template, &opts).unwrap().sandbox
}

fn request(language: Language, code: &str) -> CodeRequest {
    CodeRequest {
        language,
        code: code.into(),
        context: None,
        env: Vec::new(),
        cwd: String::new(),
        timeout: Some(LONG),
        output_cap: None,
    }
}

fn run(engine: &Engine, sb: &str, req: &CodeRequest) -> CodeResult {
    engine
        .run_code(sb, req, &CancelToken::new(), &mut |_, _| {})
        .unwrap_or_else(|e| panic!("run_code {:?}: {}", req.code, chain(&e)))
}

fn py(engine: &Engine, sb: &str, code: &str) -> CodeResult {
    run(engine, sb, &request(Language::Python, code))
}

fn in_context(engine: &Engine, sb: &str, language: Language, name: &str, code: &str) -> CodeResult {
    let req = CodeRequest {
        context: Some(name.into()),
        ..request(language, code)
    };
    run(engine, sb, &req)
}

/// The result text, after checking the run succeeded.
fn result(r: &CodeResult) -> String {
    assert_eq!(
        (r.exec.exit_code, &r.error),
        (Some(0), &None),
        "stderr: {}",
        String::from_utf8_lossy(&r.exec.stderr)
    );
    r.result.clone().expect("a result")
}

/// Whether the image has what `probe` (Python) imports; a missing one is
/// skipped unless `ZEROBOOT_REQUIRE_RUNTIMES` names it.
fn have(engine: &Engine, sb: &str, name: &str, language: Language, probe: &str) -> bool {
    let r = engine.run_code(
        sb,
        &request(language, probe),
        &CancelToken::new(),
        &mut |_, _| {},
    );
    if matches!(&r, Ok(r) if r.exec.exit_code == Some(0) && r.error.is_none()) {
        return true;
    }
    let required = std::env::var("ZEROBOOT_REQUIRE_RUNTIMES").unwrap_or_default();
    assert!(
        !required.split_whitespace().any(|n| n == name),
        "{name} is required but missing: {r:?}"
    );
    eprintln!("SKIPPED the {name} checks: the image has no {name} ({r:?})");
    false
}

/// What each fork prints for each generator, one generator a probe (so a
/// generator that repeats cannot hide behind one that does not): two forks
/// must differ in all.
const PY_RANDOM: &str = "import random\nrandom.random()";
const PY_URANDOM: &str = "import os\nos.urandom(8).hex()";
const PY_NUMPY: &str = "import numpy\nnumpy.random.rand()";
const PY_SSL: &str = "import ssl\nssl.RAND_bytes(16).hex()";
const JS_MATH: &str = "Math.random()";
const JS_CRYPTO: &str = "require('crypto').randomBytes(16).toString('hex')";

#[test]
fn each_language_runs_with_notebook_semantics() {
    const TEST: &str = "each_language_runs_with_notebook_semantics";
    if !kvm_or_skip(TEST) {
        return;
    }
    let _serial = serial();
    let Some((engine, tpl)) = spec_template(TEST) else {
        return;
    };
    let t = Instant::now();
    let sb = fork(&engine, &tpl.template);
    let r = py(&engine, &sb, "print('hi')\n6 * 7");
    let first_ms = t.elapsed().as_millis();
    assert_eq!(
        (result(&r), r.exec.stdout.as_slice()),
        ("42".into(), &b"hi\n"[..])
    );
    let r = py(&engine, &sb, "def f():\n    raise ValueError('boom')\nf()");
    let e = r.error.expect("an error");
    assert_eq!(
        (r.exec.exit_code, e.name.as_str(), e.value.as_str()),
        (Some(1), "ValueError", "boom")
    );
    assert!(
        e.traceback.contains("raise ValueError('boom')"),
        "{}",
        e.traceback
    );
    let r = py(&engine, &sb, "x = (");
    assert_eq!(r.error.expect("an error").name, "SyntaxError");

    if have(&engine, &sb, "node", Language::JavaScript, "1") {
        let r = run(
            &engine,
            &sb,
            &request(Language::JavaScript, "console.log('js'); [1, 2].length"),
        );
        assert_eq!(
            (result(&r), r.exec.stdout.as_slice()),
            ("2".into(), &b"js\n"[..])
        );
        let r = run(&engine, &sb, &request(Language::JavaScript, "null.x"));
        assert_eq!(r.error.expect("an error").name, "TypeError");
    }
    if have(&engine, &sb, "shell", Language::Bash, "true") {
        let r = run(
            &engine,
            &sb,
            &request(Language::Bash, "echo $((1 + 2)); exit 3"),
        );
        assert_eq!(
            (r.exec.stdout.as_slice(), r.exec.exit_code),
            (&b"3\n"[..], Some(3))
        );
        let sh = |code: &str| in_context(&engine, &sb, Language::Bash, "sh", code);
        sh("A=5; cd /tmp");
        assert_eq!(sh("echo $A $(pwd)").exec.stdout, b"5 /tmp\n");
    }

    // The one-shot form: fork, run, kill.
    let before = engine.list_sandboxes().len();
    let r = engine
        .run_code_once(
            &tpl.template,
            &Default::default(),
            &request(Language::Python, "1 + 1"),
            &CancelToken::new(),
            &mut |_, _, _| {},
        )
        .unwrap();
    assert_eq!(result(&r), "2");
    assert_eq!(engine.list_sandboxes().len(), before);
    eprintln!(
        "{TEST}: first fork + run_code {first_ms} ms ({} KVM)",
        engine.flavor().as_str()
    );
    engine.shutdown();
}

#[test]
fn a_context_branches_with_its_sandbox_and_reseeds_in_each_branch() {
    const TEST: &str = "a_context_branches_with_its_sandbox_and_reseeds_in_each_branch";
    if !kvm_or_skip(TEST) {
        return;
    }
    let _serial = serial();
    let Some((engine, tpl)) = spec_template(TEST) else {
        return;
    };
    let sb = fork(&engine, &tpl.template);
    let nb = |sb: &str, code: &str| in_context(&engine, sb, Language::Python, "nb", code);
    nb(&sb, "import random\nrandom.seed(7)\nx = 41");
    let numpy = have(&engine, &sb, "numpy", Language::Python, "import numpy");
    let ssl = have(&engine, &sb, "ssl", Language::Python, "import ssl");
    let node = have(&engine, &sb, "node", Language::JavaScript, "1");
    let mut probes = vec![(Language::Python, "random.random()")];
    if numpy {
        nb(&sb, "import numpy\nnumpy.random.seed(7)");
        probes.push((Language::Python, "numpy.random.rand()"));
    }
    if ssl {
        nb(&sb, "import ssl\nssl.RAND_bytes(16)");
        probes.push((Language::Python, "ssl.RAND_bytes(16).hex()"));
    }
    if node {
        in_context(
            &engine,
            &sb,
            Language::JavaScript,
            "js",
            "Math.random(); require('crypto').randomBytes(4)",
        );
        probes.push((Language::JavaScript, JS_MATH));
        probes.push((Language::JavaScript, JS_CRYPTO));
    }
    let branch = engine
        .snapshot_sandbox(&sb, Branching::Layer, &CancelToken::new())
        .unwrap()
        .template;
    let (b1, b2) = (fork(&engine, &branch), fork(&engine, &branch));
    let contexts: Vec<String> = engine
        .contexts(&b1)
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(contexts.contains(&"nb".to_string()), "{contexts:?}");
    // Both branches continue the notebook's state...
    for b in [&b1, &b2] {
        assert_eq!(result(&nb(b, "x += 1\nx")), "42");
    }
    // ...and draw different numbers from every generator after the branch point.
    let mut repeated = Vec::new();
    for (language, probe) in probes {
        let name = if language == Language::Python {
            "nb"
        } else {
            "js"
        };
        let a = result(&in_context(&engine, &b1, language, name, probe));
        let b = result(&in_context(&engine, &b2, language, name, probe));
        if a == b {
            repeated.push(format!("{probe} gave {a} in both"));
        }
    }
    assert!(
        repeated.is_empty(),
        "repeated across two branches: {repeated:#?}"
    );
    // The original sandbox was not forked: its seeded sequence goes on.
    let seeded = result(&nb(&sb, "random.random()"));
    let reference = result(&py(
        &engine,
        &sb,
        "import random\nrandom.Random(7).random()",
    ));
    assert_eq!(seeded, reference, "the source's context was reseeded");
    engine.shutdown();
}

#[test]
fn two_forks_draw_different_numbers_from_every_generator() {
    const TEST: &str = "two_forks_draw_different_numbers_from_every_generator";
    if !kvm_or_skip(TEST) {
        return;
    }
    let _serial = serial();
    let Some((engine, tpl)) = spec_template(TEST) else {
        return;
    };
    let probe_sb = fork(&engine, &tpl.template);
    let mut probes = vec![
        (Language::Python, PY_RANDOM),
        (Language::Python, PY_URANDOM),
    ];
    if have(
        &engine,
        &probe_sb,
        "numpy",
        Language::Python,
        "import numpy",
    ) {
        probes.push((Language::Python, PY_NUMPY));
    }
    if have(&engine, &probe_sb, "ssl", Language::Python, "import ssl") {
        probes.push((Language::Python, PY_SSL));
    }
    if have(&engine, &probe_sb, "node", Language::JavaScript, "1") {
        probes.push((Language::JavaScript, JS_MATH));
        probes.push((Language::JavaScript, JS_CRYPTO));
    }
    let mut repeated = Vec::new();
    for (language, probe) in probes {
        // Each probe is the first run of two fresh forks: the warm spare
        // worker, which the snapshot holds identically in both.
        let a = fork(&engine, &tpl.template);
        let b = fork(&engine, &tpl.template);
        let (ra, rb) = (
            result(&run(&engine, &a, &request(language, probe))),
            result(&run(&engine, &b, &request(language, probe))),
        );
        if ra == rb {
            repeated.push(format!("{probe} gave {ra} in both"));
        }
        engine.kill(&a).unwrap();
        engine.kill(&b).unwrap();
    }
    assert!(
        repeated.is_empty(),
        "repeated across two forks: {repeated:#?}"
    );
    engine.shutdown();
}

#[test]
fn deadlines_stop_busy_loops_and_the_sandbox_stays_usable() {
    const TEST: &str = "deadlines_stop_busy_loops_and_the_sandbox_stays_usable";
    if !kvm_or_skip(TEST) {
        return;
    }
    let _serial = serial();
    let Some((engine, tpl)) = spec_template(TEST) else {
        return;
    };
    let sb = fork(&engine, &tpl.template);
    let node = have(&engine, &sb, "node", Language::JavaScript, "1");
    let mut languages = vec![(Language::Python, "while True: pass", "6 * 7")];
    if node {
        languages.push((Language::JavaScript, "while (true) {}", "6 * 7"));
    }
    for (language, spin, after) in languages {
        // The in-guest deadline answers (emulated time is slow: a generous
        // host deadline, the guest's own is what is tested).
        let spinning = CodeRequest {
            timeout: Some(Duration::from_millis(2000)),
            ..request(language, spin)
        };
        let t = Instant::now();
        let r = engine
            .run_code(&sb, &spinning, &CancelToken::new(), &mut |_, _| {})
            .unwrap();
        assert!(r.exec.timed_out, "{language:?}: {r:?}");
        eprintln!(
            "{TEST}: {language:?} fresh run stopped after {:?}",
            t.elapsed()
        );
        assert_eq!(result(&run(&engine, &sb, &request(language, after))), "42");
        // In a context the cell is interrupted and the context lives on.
        // Contexts keep their language: one per language.
        let name = format!("spin-{language:?}");
        let ctx = |code: &str, timeout| CodeRequest {
            context: Some(name.clone()),
            timeout: Some(timeout),
            ..request(language, code)
        };
        let kept = if language == Language::Python {
            "kept = 42"
        } else {
            "var kept = 42"
        };
        run(&engine, &sb, &ctx(kept, LONG));
        let r = engine
            .run_code(
                &sb,
                &ctx(spin, Duration::from_millis(2000)),
                &CancelToken::new(),
                &mut |_, _| {},
            )
            .unwrap();
        assert!(r.exec.timed_out && r.error.is_some(), "{language:?}: {r:?}");
        assert_eq!(result(&run(&engine, &sb, &ctx("kept", LONG))), "42");
        let _ = engine.contexts(&sb).unwrap();
    }
    engine.shutdown();
}
