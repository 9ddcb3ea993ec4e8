//! A bounded fuzz run of framing + dispatch: proptest builds byte streams from
//! valid and broken messages in both framings (wrong lengths, garbage headers,
//! random bytes, truncation), runs a whole session over them in-process with
//! no engine (zeroboot::rpc::run_session), and checks the worker never
//! panics, ends with code 0 or 1, and writes nothing but well-formed frames
//! of the peer's framing, each a response that matches the schema.

#[path = "common/rpc_schema.rs"]
mod rpc_schema;

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;
use rpc_schema::RpcSchema;
use serde_json::{Value, json};

static PANICKED: AtomicBool = AtomicBool::new(false);
static SCHEMA: std::sync::LazyLock<RpcSchema> = std::sync::LazyLock::new(RpcSchema::load);

fn watch_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("worker.info".to_string()),
        Just("rpc.discover".to_string()),
        Just("template.load".to_string()),
        Just("sandbox.exec".to_string()),
        Just("sandbox.fork".to_string()),
        Just("sandbox.kill".to_string()),
        Just("shutdown".to_string()),
        Just("exit".to_string()),
        Just("$/cancelRequest".to_string()),
        "[a-z./$]{0,12}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn id() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        any::<i32>().prop_map(|n| Some(json!(n))),
        "[a-z0-9]{0,6}".prop_map(|s| Some(json!(s))),
        leaf().prop_map(Some),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    (method(), prop::option::of(value()), id()).prop_map(|(method, params, id)| {
        let mut m = json!({"jsonrpc": "2.0", "method": method});
        if let Some(p) = params {
            m["params"] = p;
        }
        if let Some(id) = id {
            m["id"] = id;
        }
        m
    })
}

/// One piece of input, as bytes; `framed` pieces get the session's framing.
#[derive(Clone, Debug)]
enum Piece {
    Message(Value),
    Batch(Vec<Value>),
    Json(Value),
    Bytes(Vec<u8>),
    /// An LSP header whose length is off by this much.
    WrongLength(Value, i8),
    Header(String),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => message().prop_map(Piece::Message),
        2 => prop::collection::vec(message(), 0..4).prop_map(Piece::Batch),
        2 => value().prop_map(Piece::Json),
        2 => prop::collection::vec(any::<u8>(), 0..48).prop_map(Piece::Bytes),
        1 => (message(), any::<i8>()).prop_map(|(m, d)| Piece::WrongLength(m, d)),
        1 => "[ -~]{0,30}".prop_map(Piece::Header),
    ]
}

fn render(pieces: &[Piece], lsp: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let frame = |out: &mut Vec<u8>, body: &[u8]| {
        if lsp {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        } else {
            out.extend_from_slice(body);
            out.push(b'\n');
        }
    };
    for p in pieces {
        match p {
            Piece::Message(m) => frame(&mut out, m.to_string().as_bytes()),
            Piece::Batch(ms) => frame(&mut out, Value::from(ms.clone()).to_string().as_bytes()),
            Piece::Json(v) => frame(&mut out, v.to_string().as_bytes()),
            Piece::Bytes(b) => frame(&mut out, b),
            Piece::WrongLength(m, delta) => {
                let body = m.to_string();
                let len = (body.len() as i64 + *delta as i64).max(0);
                out.extend_from_slice(format!("Content-Length: {len}\r\n\r\n{body}").as_bytes());
            }
            Piece::Header(h) => out.extend_from_slice(format!("{h}\r\n").as_bytes()),
        }
    }
    out
}

/// Splits the worker's output into frames, strictly.
fn frames(out: &[u8], lsp: bool) -> Result<Vec<Vec<u8>>, String> {
    let mut r = BufReader::new(out);
    let mut frames = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).map_err(|e| e.to_string())? == 0 {
            return Ok(frames);
        }
        if line.pop() != Some(b'\n') {
            return Err("output ends inside a line".into());
        }
        if !lsp {
            frames.push(line);
            continue;
        }
        let text = String::from_utf8(line).map_err(|e| e.to_string())?;
        let len: usize = text
            .strip_prefix("Content-Length: ")
            .and_then(|t| t.strip_suffix('\r'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad header {text:?}"))?;
        let mut blank = Vec::new();
        r.read_until(b'\n', &mut blank).map_err(|e| e.to_string())?;
        if blank != b"\r\n" {
            return Err(format!("no blank line after the header: {blank:?}"));
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
        frames.push(body);
    }
}

fn check_session(input: Vec<u8>, limit: usize, schema: &RpcSchema) -> Result<(), TestCaseError> {
    watch_panics();
    let first = input.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let (out, code) = zeroboot::rpc::run_session(input, limit);
    prop_assert!(!PANICKED.load(Ordering::SeqCst), "something panicked");
    prop_assert!(code == 0 || code == 1, "exit code {}", code);
    let Some(first) = first else {
        prop_assert!(out.is_empty());
        return Ok(());
    };
    let lsp = first.is_ascii_alphabetic();
    let frames = frames(&out, lsp).map_err(TestCaseError::fail)?;
    for body in frames {
        let msg: Value = serde_json::from_slice(&body)
            .map_err(|e| TestCaseError::fail(format!("frame is not JSON: {e}")))?;
        let replies = match &msg {
            Value::Array(items) => {
                prop_assert!(!items.is_empty(), "empty batch reply");
                items.clone()
            }
            other => vec![other.clone()],
        };
        for r in replies {
            prop_assert!(
                r.get("method").is_none(),
                "no notifications without an engine: {}",
                r
            );
            schema
                .check_response(None, &r)
                .map_err(TestCaseError::fail)?;
        }
    }
    Ok(())
}

/// A fixed seed and a bounded number of cases, so every run is the same;
/// PROPTEST_RNG_SEED and PROPTEST_CASES override them for a longer hunt.
fn config() -> ProptestConfig {
    use proptest::test_runner::RngSeed;
    let env = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            env.cases
        } else {
            160
        },
        rng_seed: match env.rng_seed {
            RngSeed::Random => RngSeed::Fixed(0x2e60_b007),
            fixed => fixed,
        },
        failure_persistence: None,
        ..env
    }
}

proptest! {    #![proptest_config(config())]

    #[test]
    fn framing_and_dispatch_survive_arbitrary_input(
        pieces in prop::collection::vec(piece(), 0..12),
        lsp in any::<bool>(),
        cut in prop::option::of(any::<prop::sample::Index>()),
        limit in 16usize..4096,
    ) {
        let mut input = render(&pieces, lsp);
        if let Some(cut) = cut && !input.is_empty() {
            input.truncate(cut.index(input.len()));
        }
        check_session(input, limit, &SCHEMA)?;
    }

    #[test]
    fn random_bytes_never_break_the_worker(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        limit in 1usize..1024,
    ) {
        check_session(bytes, limit, &SCHEMA)?;
    }
}

#[test]
fn valid_sessions_answer_every_request() {
    let schema = RpcSchema::load();
    for lsp in [true, false] {
        let pieces: Vec<Piece> = (0..20)
            .map(|i| Piece::Message(json!({"jsonrpc": "2.0", "id": i, "method": "worker.info"})))
            .collect();
        let (out, code) = zeroboot::rpc::run_session(render(&pieces, lsp), 1 << 20);
        assert_eq!(code, 0);
        let frames = frames(&out, lsp).unwrap();
        assert_eq!(frames.len(), 20);
        for f in frames {
            let v: Value = serde_json::from_slice(&f).unwrap();
            schema.check_response(Some("worker.info"), &v).unwrap();
        }
    }
}
