//! Bounded fuzz runs of the inputs the worker reads from files and requests
//! besides the wire protocol (tests/rpc_fuzz.rs) and the guest's frames
//! (tests/fuzz_guest.rs): the template file reader and the template spec
//! parser. Nothing may panic; every refusal is a typed error, in bounded
//! time. (Why property tests rather than cargo-fuzz: tests/common/fuzz.rs.)
//!
//! Template files: a file saved from the bare template is the seed; cases
//! change its header's JSON (a value swapped for an extreme one, a field
//! removed) or its prefix words, with the checksum recomputed so the checks
//! behind it are reached, or flip and cut raw bytes without recomputing it.
//! Each case goes through `Engine::inspect_file` and `Engine::load_file`.
//!
//! Specs: the files of tests/corpus/spec are the seeds; cases are random TOML
//! and JSON, seeds with bytes changed, and seeds with a value swapped.

#[path = "common/fuzz.rs"]
mod fuzz;
mod support;
#[path = "common/template_file.rs"]
mod template_file;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuzz::fuzz;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::*;
use template_file::{Dir, Parts};
use zeroboot::engine::{CancelToken, Engine, EngineConfig, EngineError};
use zeroboot::spec::Spec;

/// Longest a refused or accepted load may take (a guest that never answers
/// is stopped at the engine's probe deadline, far below this).
const LOAD_BOUND: Duration = Duration::from_secs(40);

/// Values a field is swapped for.
fn extreme() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1u64 << 40)),
        Just(json!(1.5)),
        Just(json!(null)),
        Just(json!("")),
        Just(json!("\u{0}\u{fffd}")),
        Just(json!([])),
        Just(json!({})),
        Just(Value::Array(vec![json!(255); 70_000])),
        any::<u64>().prop_map(|n| json!(n)),
        any::<u8>().prop_map(|n| json!(n)),
    ]
}

/// Every path to a value in `v`, as keys and indices (arrays: a few indices).
fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                at.push(k.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for i in [0, a.len() / 2, a.len().saturating_sub(1)] {
                if let Some(child) = a.get(i) {
                    at.push(i.to_string());
                    paths(child, at, out);
                    at.pop();
                }
            }
        }
        _ => {}
    }
}

fn at_path<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match v {
        Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
        v => &mut v[k.as_str()],
    })
}

/// One change to the header: at path number `pick` (modulo), `value`, or
/// the field removed when `value` is None.
#[derive(Debug, Clone)]
enum FileCase {
    Field {
        pick: usize,
        value: Option<Value>,
    },
    Memory(u64),
    Raw {
        at: u64,
        bytes: Vec<u8>,
        cut: Option<u64>,
    },
}

fn file_case() -> impl Strategy<Value = FileCase> {
    prop_oneof![
        6 => (any::<usize>(), prop::option::weighted(0.85, extreme()))
            .prop_map(|(pick, value)| FileCase::Field { pick, value }),
        1 => prop_oneof![
            Just(0u64),
            Just(4096),
            Just(1 << 20),
            Just(64u64 << 30),
            Just(u64::MAX),
            any::<u64>()
        ]
        .prop_map(FileCase::Memory),
        2 => (0u64..70_000, prop::collection::vec(any::<u8>(), 1..16), prop::option::of(0u64..70_000))
            .prop_map(|(at, bytes, cut)| FileCase::Raw { at, bytes, cut }),
    ]
}

/// Writes the seed changed by `case` to `path`.
fn apply(seed: &[u8], path: &Path, case: &FileCase, all: &[Vec<String>]) {
    std::fs::write(path, seed).unwrap();
    let mut parts = Parts::read(path);
    match case {
        FileCase::Field { pick, value } => {
            let p = &all[pick % all.len()];
            match (value, p.split_last()) {
                (Some(v), _) => *at_path(&mut parts.header, p) = v.clone(),
                (None, Some((last, parent))) => match at_path(&mut parts.header, parent) {
                    Value::Object(m) => drop(m.remove(last)),
                    Value::Array(a) => drop(a.remove(last.parse::<usize>().unwrap())),
                    _ => {}
                },
                (None, None) => parts.header = Value::Null,
            }
            parts.write();
        }
        FileCase::Memory(m) => {
            parts.memory = *m;
            parts.write();
        }
        FileCase::Raw { at, bytes, cut } => {
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(bytes, *at).unwrap();
            if let Some(len) = cut {
                f.set_len(*len).unwrap();
            }
        }
    }
}

#[test]
fn template_files_never_break_the_reader() {
    if !kvm_or_skip("template_files_never_break_the_reader") {
        return;
    }
    let (engine, bare) = engine_with(EngineConfig {
        pool_size: 0,
        ..Default::default()
    });
    let dir = Dir::new("fuzz-files");
    let seed_path = dir.0.join("seed.zbt");
    engine
        .save_template(&bare, &seed_path, &CancelToken::new())
        .unwrap();
    let seed = std::fs::read(&seed_path).unwrap();
    let mut all = Vec::new();
    paths(&Parts::read(&seed_path).header, &mut Vec::new(), &mut all);
    let case_path: PathBuf = dir.0.join("case.zbt");
    let baseline = engine.memory_budget().1;
    fuzz("template files", 32, file_case(), |case| {
        apply(&seed, &case_path, &case, &all);
        let _ = Engine::inspect_file(&case_path);
        let start = Instant::now();
        let loaded = engine.load_file(&case_path, &CancelToken::new());
        prop_assert!(
            start.elapsed() < LOAD_BOUND,
            "{case:?} took {:?}",
            start.elapsed()
        );
        match loaded {
            Ok(info) => {
                // Accepted: it must behave as a template.
                if let Ok(f) = engine.fork(&info.template) {
                    let _ = run(&engine, &f.sandbox, &["echo"]);
                }
                engine
                    .unload_template(&info.template, zeroboot::engine::Unload::KillSandboxes)
                    .unwrap();
            }
            Err(
                EngineError::TemplateFile { .. }
                | EngineError::TemplateIncompatible { .. }
                | EngineError::TemplateUnresponsive { .. }
                | EngineError::OverBudget { .. },
            ) => {}
            Err(e) => prop_assert!(false, "{case:?}: untyped refusal {e:?}"),
        }
        Ok(())
    });
    // Every refused or unloaded template gave its budget back (VMs go on
    // their own threads: give them a moment).
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.memory_budget().1 != baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(engine.memory_budget().1, baseline);
}

fn corpus() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/spec");
    let mut seeds: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 3, "the spec corpus is in tests/corpus/spec");
    seeds
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        "[a-z_./=*0-9 -]{0,12}".prop_map(Value::String),
        Just(json!("python")),
        Just(json!("/abs/path")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("base".to_string()),
                    Just("python".to_string()),
                    Just("packages".to_string()),
                    Just("preload".to_string()),
                    Just("debian".to_string()),
                    Just("files".to_string()),
                    Just("from".to_string()),
                    Just("to".to_string()),
                    Just("mode".to_string()),
                    Just("oci".to_string()),
                    Just("memory_mib".to_string()),
                    Just("env".to_string()),
                    Just("user".to_string()),
                    Just("warmup".to_string()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum SpecCase {
    Toml(String),
    Json(Value),
    Bytes {
        seed: usize,
        at: usize,
        bytes: Vec<u8>,
    },
    Swap {
        seed: usize,
        pick: usize,
        value: Value,
    },
}

fn spec_case() -> impl Strategy<Value = SpecCase> {
    prop_oneof![
        any::<String>().prop_map(SpecCase::Toml),
        json_value().prop_map(SpecCase::Json),
        (
            any::<usize>(),
            any::<usize>(),
            prop::collection::vec(any::<u8>(), 1..8)
        )
            .prop_map(|(seed, at, bytes)| SpecCase::Bytes { seed, at, bytes }),
        (
            any::<usize>(),
            any::<usize>(),
            prop_oneof![extreme(), json_value()]
        )
            .prop_map(|(seed, pick, value)| SpecCase::Swap { seed, pick, value }),
    ]
}

#[test]
fn specs_never_break_the_parser() {
    let seeds = corpus();
    let dir = Path::new("/specs");
    for s in &seeds {
        Spec::from_toml(s, dir).expect("every corpus spec is valid");
    }
    fuzz("specs", 256, spec_case(), |case| {
        let parsed = match &case {
            SpecCase::Toml(text) => Spec::from_toml(text, dir),
            SpecCase::Json(v) => Spec::from_json(v, dir),
            SpecCase::Bytes { seed, at, bytes } => {
                let mut b = seeds[seed % seeds.len()].clone().into_bytes();
                let at = at % (b.len() + 1);
                b.splice(at..(at + bytes.len()).min(b.len()), bytes.iter().copied());
                Spec::from_toml(&String::from_utf8_lossy(&b), dir)
            }
            SpecCase::Swap { seed, pick, value } => {
                let seed: toml::Value = toml::from_str(&seeds[seed % seeds.len()]).unwrap();
                let mut v = serde_json::to_value(seed).unwrap();
                let mut all = Vec::new();
                paths(&v, &mut Vec::new(), &mut all);
                *at_path(&mut v, &all[pick % all.len()]) = value.clone();
                Spec::from_json(&v, dir)
            }
        };
        // A spec that parses can be written back and parsed to the same.
        if let Ok(spec) = parsed {
            let again = Spec::from_json(&spec.to_json(), dir);
            prop_assert!(matches!(&again, Ok(s) if *s == spec), "{case:?}: {again:?}");
        }
        Ok(())
    });
}
