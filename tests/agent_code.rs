//! The Linux agent's RunCode (notebook semantics, persistent contexts) and
//! ListContexts, run as a host process over pipes with the host's python3,
//! Node.js and shell: what a cell returns, how its errors look, what a
//! context keeps, how deadlines stop cells. The binary under test is the
//! static one the guest image packs; the host side is the worker's own
//! conversation code.

mod agent_support;

use agent_support::{Agent, CodeSpec, End};
use std::process::Command;
use std::time::{Duration, Instant};
use zeroboot::agent::Language;
use zeroboot_proto::{AgentErrorCode, Stream};

/// True when the host has Node.js; the JavaScript tests need it.
fn have_node(test: &str) -> bool {
    let ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("ZEROBOOT_REQUIRE_NODE").as_deref() != Ok("1"),
            "{test}: ZEROBOOT_REQUIRE_NODE=1 but there is no node on PATH"
        );
        eprintln!("SKIPPED {test}: no node on PATH");
    }
    ok
}

#[test]
fn a_final_expression_is_the_result_and_print_is_output() {
    let mut a = Agent::start();
    let run = a.run_code(&CodeSpec::python("x = 6\nx * 7"));
    assert_eq!((run.code(), run.result()), (0, Some("42")));
    assert_eq!(run.stdout(), "");
    let run = a.run_code(&CodeSpec::python("print('hi')"));
    assert_eq!((run.stdout().as_str(), run.result()), ("hi\n", None));
    let run = a.run_code(&CodeSpec::python("'a' + 'b'"));
    assert_eq!(run.result(), Some("'ab'"));
    let run = a.run_code(&CodeSpec::python("for i in range(2):\n    i"));
    assert_eq!(
        run.result(),
        None,
        "only a final expression statement counts"
    );
    let run = a.run_code(&CodeSpec::python("None"));
    assert_eq!(run.result(), None, "None is no result, as in a notebook");
    let run = a.run_code(&CodeSpec::python(""));
    assert_eq!((run.code(), run.result()), (0, None));
}

#[test]
fn an_uncaught_exception_is_a_structured_error_with_its_traceback() {
    let mut a = Agent::start();
    let run = a.run_code(&CodeSpec::python(
        "def f():\n    raise ValueError('boom')\n\nf()",
    ));
    assert_eq!(run.code(), 1);
    let e = run.error();
    assert_eq!((e.name.as_str(), e.value.as_str()), ("ValueError", "boom"));
    assert!(e.traceback.starts_with("Traceback"), "{}", e.traceback);
    // The cell's own lines are shown, the worker's frames are not.
    assert!(
        e.traceback.contains("    raise ValueError('boom')"),
        "{}",
        e.traceback
    );
    assert!(e.traceback.contains("<cell-1>"), "{}", e.traceback);
    assert!(!e.traceback.contains("_run_cell"), "{}", e.traceback);
    assert_eq!(
        run.stderr(),
        "",
        "the error is reported once, not also on stderr"
    );
    assert_eq!(run.result(), None);
}

#[test]
fn a_syntax_error_names_the_line() {
    let mut a = Agent::start();
    let run = a.run_code(&CodeSpec::python("x = 1\ny = (\n"));
    assert_eq!(run.code(), 1);
    let e = run.error();
    assert_eq!(e.name, "SyntaxError");
    assert!(e.traceback.contains("y = ("), "{}", e.traceback);
    assert!(!e.traceback.contains("Traceback"), "{}", e.traceback);
}

#[test]
fn output_streams_in_the_order_it_was_written() {
    let mut a = Agent::start();
    let run = a.run_code(&CodeSpec::python(
        "import sys, time\nprint('a')\ntime.sleep(0.2)\nsys.stderr.write('b\\n')\ntime.sleep(0.2)\nprint('c')\n5",
    ));
    let chunks: Vec<(Stream, String)> = run
        .chunks
        .iter()
        .map(|(s, d)| (*s, String::from_utf8_lossy(d).into_owned()))
        .collect();
    assert_eq!(
        chunks,
        [
            (Stream::Stdout, "a\n".to_string()),
            (Stream::Stderr, "b\n".to_string()),
            (Stream::Stdout, "c\n".to_string())
        ]
    );
    assert_eq!(run.result(), Some("5"));
}

#[test]
fn a_context_keeps_its_state_through_a_failing_cell() {
    let mut a = Agent::start();
    let nb = |code: &str| CodeSpec::python(code).context("nb");
    assert_eq!(a.run_code(&nb("import json\nx = 1")).code(), 0);
    let run = a.run_code(&nb("x += 1\n1 / 0"));
    assert_eq!(
        (run.code(), run.error().name.as_str()),
        (1, "ZeroDivisionError")
    );
    let run = a.run_code(&nb("json.dumps([x])"));
    assert_eq!(run.result(), Some("'[2]'"), "stderr: {}", run.stderr());
    // SystemExit ends the cell with its code, not the context.
    let run = a.run_code(&nb("raise SystemExit(3)"));
    assert_eq!((run.code(), run.ended().error.is_none()), (3, true));
    assert_eq!(a.run_code(&nb("x")).result(), Some("2"));
    // Another context, and a fresh run, see none of it.
    let other = a.run_code(&CodeSpec::python("'x' in dir()").context("other"));
    assert_eq!(other.result(), Some("False"));
    assert_eq!(
        a.run_code(&CodeSpec::python("'x' in dir()")).result(),
        Some("False")
    );
    let names: Vec<(String, Language)> = a
        .client
        .contexts()
        .into_iter()
        .map(|c| (c.name, c.language))
        .collect();
    assert_eq!(
        names,
        [
            ("nb".to_string(), Language::Python),
            ("other".to_string(), Language::Python)
        ]
    );
}

#[test]
fn env_and_cwd_apply_to_the_cell_and_stay_in_a_context() {
    let mut a = Agent::start();
    let run = a.run_code(
        &CodeSpec::python("import os\nos.environ['K'], os.getcwd()")
            .env("K", "v")
            .cwd("/tmp")
            .context("c"),
    );
    assert_eq!(run.result(), Some("('v', '/tmp')"));
    let run = a.run_code(&CodeSpec::python("os.environ['K'], os.getcwd()").context("c"));
    assert_eq!(run.result(), Some("('v', '/tmp')"));
    let run = a.run_code(&CodeSpec::python("1").cwd("/nonexistent-dir"));
    assert!(
        matches!(run.end, Err(End::Error(AgentErrorCode::SpawnFailed, _))),
        "{:?}",
        run.end
    );
}

#[test]
fn a_deadline_interrupts_a_context_cell_and_kills_a_fresh_run() {
    let mut a = Agent::start();
    let nb = |code: &str| CodeSpec::python(code).context("nb");
    a.run_code(&nb("kept = 'yes'"));
    let t = Instant::now();
    let run = a.run_code(&nb("while True: pass").timeout_ms(300));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let end = run.ended();
    assert!(end.end.timed_out);
    assert_eq!(run.error().name, "KeyboardInterrupt");
    assert_eq!(
        a.run_code(&nb("kept")).result(),
        Some("'yes'"),
        "the context survived"
    );

    let t = Instant::now();
    let run = a.run_code(&CodeSpec::python("while True: pass").timeout_ms(300));
    let end = run.ended();
    assert!(
        end.end.timed_out && end.end.signal == libc::SIGKILL,
        "{end:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(a.run_code(&CodeSpec::python("6 * 7")).result(), Some("42"));
}

#[test]
fn a_context_that_ignores_the_interrupt_is_killed_and_replaced() {
    let mut a = Agent::start();
    let nb = |code: &str| CodeSpec::python(code).context("nb");
    a.run_code(&nb("kept = 1"));
    let run = a.run_code(&nb(
        // (CPython 3.11 does not catch an interrupt inside a bare busy loop
        // in a try block; a sleep is caught.)
        "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass",
    )
    .timeout_ms(200));
    let end = run.ended();
    assert!(
        end.end.timed_out && end.end.signal == libc::SIGKILL,
        "{end:?}"
    );
    assert!(a.client.contexts().is_empty(), "the dead context is gone");
    let run = a.run_code(&nb("'kept' in dir()"));
    assert_eq!(
        run.result(),
        Some("False"),
        "a new interpreter took the name"
    );
}

#[test]
fn a_context_reseeds_its_generators_only_in_a_new_vm() {
    let mut a = Agent::start();
    let cell = |code: &str, vm: u64| CodeSpec::python(code).context("r").vm(vm);
    let reference = a.run_code(&CodeSpec::python(
        "import random\nr = random.Random(1)\nr.random(), r.random()",
    ));
    let pair = reference.result().unwrap().to_string();
    let first = a.run_code(&cell("import random\nrandom.seed(1)\nrandom.random()", 7));
    assert!(pair.starts_with(&format!("({}", first.result().unwrap())));
    // Same VM: the seeded sequence goes on.
    let second = a.run_code(&cell("random.random()", 7));
    assert!(
        pair.ends_with(&format!(", {})", second.result().unwrap())),
        "{pair}"
    );
    // A new VM (a fork of a snapshot): the generator was reseeded.
    a.run_code(&cell("random.seed(1)\nrandom.random()", 7));
    let forked = a.run_code(&cell("random.random()", 8));
    assert!(
        !pair.ends_with(&format!(", {})", forked.result().unwrap())),
        "{pair}"
    );
}

#[test]
fn contexts_are_bounded_and_keep_their_language() {
    let mut a = Agent::start();
    a.run_code(&CodeSpec::python("1").context("py"));
    let run = a.run_code(&CodeSpec::bash("true").context("py"));
    assert!(
        matches!(&run.end, Err(End::Error(AgentErrorCode::BadRequest, m)) if m.contains("python")),
        "{:?}",
        run.end
    );
    for i in 1..16 {
        assert_eq!(
            a.run_code(&CodeSpec::python("1").context(&format!("c{i}")))
                .code(),
            0
        );
    }
    let run = a.run_code(&CodeSpec::python("1").context("one-too-many"));
    assert!(
        matches!(&run.end, Err(End::Error(AgentErrorCode::BadRequest, m)) if m.contains("16")),
        "{:?}",
        run.end
    );
}

#[test]
fn python_runs_after_the_first_fork_from_the_zygote() {
    let mut a = Agent::start();
    // The first run takes the spare worker; the ones after are new forks.
    for _ in 0..3 {
        let run = a.run_code(&CodeSpec::python("import os\nos.getppid() != os.getpid()"));
        assert_eq!(run.result(), Some("True"), "stderr: {}", run.stderr());
    }
    let pids: Vec<String> = (0..2)
        .map(|_| {
            a.run_code(&CodeSpec::python("import os\nos.getpid()"))
                .result()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(pids[0], pids[1], "each fresh run is a process of its own");
}

/// True while process `pid` exists and is not a zombie.
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.split(") ")
            .nth(1)
            .is_some_and(|rest| !rest.starts_with('Z'))
    })
}

#[test]
fn a_finished_worker_lingers_until_the_next_request_and_its_children_live_on() {
    let mut a = Agent::start();
    let run = a.run_code(&CodeSpec::python(
        "import os, subprocess\n\
         child = subprocess.Popen(['sleep', '30'])\n\
         f'{os.getpid()} {child.pid}'",
    ));
    let result = run.result().unwrap().trim_matches('\'').to_string();
    let (worker, child) = result.split_once(' ').unwrap();
    assert!(alive(worker), "a finished worker waits to be dismissed");
    assert_eq!(a.run_code(&CodeSpec::python("1")).result(), Some("1"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(worker) {
        assert!(
            Instant::now() < deadline,
            "worker {worker} was never dismissed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        alive(child),
        "what the run left running is not killed with it"
    );
    let _ = Command::new("kill").arg(child).status();
}

#[test]
fn shell_code_runs_with_sh_c_semantics_and_contexts_keep_variables() {
    let mut a = Agent::start();
    let run = a.run_code(&CodeSpec::bash("echo $((1+2)); echo err >&2; exit 3"));
    assert_eq!(
        (run.stdout().as_str(), run.stderr().as_str()),
        ("3\n", "err\n")
    );
    assert_eq!((run.code(), run.result()), (3, None));
    let sh = |code: &str| CodeSpec::bash(code).context("sh");
    assert_eq!(a.run_code(&sh("A=5; cd /tmp").env("B", "it's")).code(), 0);
    let run = a.run_code(&sh("echo $A $(pwd) \"$B\"; false"));
    assert_eq!((run.stdout().as_str(), run.code()), ("5 /tmp it's\n", 1));
    // `exit` ends the context; the next cell with the name starts afresh.
    assert_eq!(a.run_code(&sh("exit 4")).code(), 4);
    assert_eq!(a.run_code(&sh("echo \"[$A]\"")).stdout(), "[]\n");
    let run = a.run_code(&sh("sleep 30").timeout_ms(200));
    assert!(run.ended().end.timed_out);
}

#[test]
fn javascript_cells_return_values_and_errors_and_contexts_persist() {
    if !have_node("javascript_cells_return_values_and_errors_and_contexts_persist") {
        return;
    }
    let mut a = Agent::start();
    let run = a.run_code(&CodeSpec::javascript("console.log('hi'); 1 + 1"));
    assert_eq!(
        (run.stdout().as_str(), run.result(), run.code()),
        ("hi\n", Some("2"), 0)
    );
    let run = a.run_code(&CodeSpec::javascript("({a: [1, 'x']})"));
    assert_eq!(run.result(), Some("{ a: [ 1, 'x' ] }"));
    let run = a.run_code(&CodeSpec::javascript(
        "const f = () => { throw new TypeError('t') };\nf()",
    ));
    assert_eq!(run.code(), 1);
    let e = run.error();
    assert_eq!((e.name.as_str(), e.value.as_str()), ("TypeError", "t"));
    assert!(e.traceback.contains("<cell-1>:1"), "{}", e.traceback);
    let run = a.run_code(&CodeSpec::javascript("let x = ;"));
    assert_eq!(run.error().name, "SyntaxError");
    // A fresh run lets the event loop finish, as `node -e` does.
    let run = a.run_code(&CodeSpec::javascript(
        "setTimeout(() => console.log('later'), 50); 'now'",
    ));
    assert_eq!(
        (run.result(), run.stdout().as_str()),
        (Some("'now'"), "later\n")
    );
    let run = a.run_code(&CodeSpec::javascript("require('os').EOL.length"));
    assert_eq!(run.result(), Some("1"), "stderr: {}", run.stderr());

    let js = |code: &str| CodeSpec::javascript(code).context("js");
    assert_eq!(
        a.run_code(&js("let n = 1; var v = 'v'; globalThis.g = 3"))
            .code(),
        0
    );
    assert_eq!(a.run_code(&js("null.boom")).error().name, "TypeError");
    assert_eq!(a.run_code(&js("[n, v, g]")).result(), Some("[ 1, 'v', 3 ]"));
    let t = Instant::now();
    let run = a.run_code(&js("while (true) {}").timeout_ms(300));
    assert!(run.ended().end.timed_out, "{:?}", run.end);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        a.run_code(&js("n + 1")).result(),
        Some("2"),
        "the context survived"
    );
    let run = a.run_code(&CodeSpec::javascript("while (true) {}").timeout_ms(300));
    assert!(run.ended().end.timed_out && run.ended().end.signal == libc::SIGKILL);
    let names: Vec<_> = a
        .client
        .contexts()
        .into_iter()
        .map(|c| c.language)
        .collect();
    assert_eq!(names, [Language::JavaScript]);
}

#[test]
fn javascript_math_random_draws_from_a_reseedable_pool() {
    if !have_node("javascript_math_random_draws_from_a_reseedable_pool") {
        return;
    }
    let mut a = Agent::start();
    let run = a.run_code(&CodeSpec::javascript(
        "const xs = Array.from({length: 2000}, Math.random);\n\
         [xs.every(x => x >= 0 && x < 1), new Set(xs).size, Math.random.name]",
    ));
    assert_eq!(
        run.result(),
        Some("[ true, 2000, 'random' ]"),
        "stderr: {}",
        run.stderr()
    );
}

#[test]
fn javascript_workers_load_the_openssl_reseed_module() {
    if !have_node("javascript_workers_load_the_openssl_reseed_module") {
        return;
    }
    let addon = agent_support::node_addon().to_str().unwrap().to_string();
    let mut a = Agent::start_with(&["--node-addon", &addon]);
    let js = |code: &str, vm| CodeSpec::javascript(code).context("js").vm(vm);
    let first = a.run_code(&js("require('crypto').randomBytes(8).length", 1));
    assert_eq!((first.result(), first.stderr().as_str()), (Some("8"), ""));
    // A new VM: the worker calls the module's reseed() before the cell.
    let after = a.run_code(&js("require('crypto').randomBytes(8).length", 2));
    assert_eq!((after.result(), after.stderr().as_str()), (Some("8"), ""));
    // A module that does not load is said, and JavaScript still runs.
    let mut b = Agent::start_with(&["--node-addon", "/nonexistent/reseed.node"]);
    let run = b.run_code(&CodeSpec::javascript("1"));
    assert!(
        run.stderr().contains("cannot load the reseed addon"),
        "{}",
        run.stderr()
    );
    assert_eq!(run.result(), Some("1"));
}

#[test]
fn a_language_the_agent_lacks_is_unsupported() {
    let mut a = Agent::start_with(&["--node", "none"]);
    let run = a.run_code(&CodeSpec::javascript("1"));
    assert!(
        matches!(&run.end, Err(End::Error(AgentErrorCode::Unsupported, m)) if m.contains("Node.js")),
        "{:?}",
        run.end
    );
    assert_eq!(a.run_code(&CodeSpec::python("1")).result(), Some("1"));
}
