//! schema/openrpc.json is checked, not decorative: it validates against the
//! vendored OpenRPC meta-schema, its examples and error data validate against
//! its own schemas, and `rpc.discover` returns exactly it.

#[path = "common/rpc_client.rs"]
mod rpc_client;
#[path = "common/rpc_schema.rs"]
mod rpc_schema;

use std::collections::BTreeSet;

use jsonschema::Draft;
use rpc_client::{BOTH, Worker};
use rpc_schema::{RpcSchema, document};
use serde_json::{Value, json};

fn vendored(name: &str) -> Value {
    let path = format!("{}/schema/meta/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // Both declare their own URL as `$schema`; they are draft-07 schemas.
    v.as_object_mut().unwrap().remove("$schema");
    v
}

/// Serves the JSON Schema meta-schema the OpenRPC one refers to, offline.
struct Vendored(Value);

impl jsonschema::Retrieve for Vendored {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        if uri.as_str().trim_end_matches('/') == "https://meta.json-schema.tools" {
            Ok(self.0.clone())
        } else {
            Err(format!("not vendored: {uri}").into())
        }
    }
}

#[test]
fn openrpc_document_validates_against_the_meta_schema() {
    let meta = vendored("openrpc-1.14.9.json");
    let validator = jsonschema::options()
        .with_draft(Draft::Draft7)
        .with_retriever(Vendored(vendored("json-schema-tools-1.8.0.json")))
        .build(&meta)
        .expect("the meta-schema compiles");
    let doc = document();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    // The meta-schema is strict enough to catch a broken document.
    let mut broken = doc.clone();
    broken["methods"][0]["params"] = json!("not a list");
    assert!(!validator.is_valid(&broken));
    let mut broken = doc;
    broken["methods"][0]["surprise"] = json!(1);
    assert!(!validator.is_valid(&broken));
}

#[test]
fn every_method_is_by_name_and_every_error_is_described() {
    let doc = document();
    let errors = doc["components"]["errors"].as_object().unwrap();
    let codes: BTreeSet<i64> = errors
        .values()
        .map(|e| e["code"].as_i64().unwrap())
        .collect();
    let shaped: BTreeSet<i64> = doc["components"]["schemas"]["ErrorObject"]["anyOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["properties"]["code"]["const"].as_i64().unwrap())
        .collect();
    assert_eq!(
        codes, shaped,
        "every error code has a data shape and vice versa"
    );
    for code in &codes {
        let standard = [-32700, -32600, -32601, -32602, -32603, -32800];
        assert!(
            standard.contains(code) || !(-32768..=-32000).contains(code),
            "application code {code} is in the reserved range"
        );
    }
    let names: Vec<&str> = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "method names are unique");
    for required in [
        "template.load",
        "template.list",
        "template.unload",
        "template.save",
        "sandbox.fork",
        "sandbox.exec",
        "sandbox.kill",
        "sandbox.list",
        "sandbox.stats",
        "worker.info",
        "rpc.discover",
        "shutdown",
        "exit",
        "$/cancelRequest",
    ] {
        assert!(unique.contains(required), "{required} is documented");
    }
    for m in doc["methods"].as_array().unwrap() {
        assert_eq!(m["paramStructure"], "by-name", "{}", m["name"]);
        assert!(m["description"].as_str().is_some_and(|d| !d.is_empty()));
        let notification = ["exit", "$/cancelRequest"].contains(&m["name"].as_str().unwrap());
        assert_eq!(m.get("result").is_none(), notification, "{}", m["name"]);
    }
}

#[test]
fn error_examples_and_method_examples_validate() {
    let doc = document();
    let schema = RpcSchema::load();
    for (name, e) in doc["components"]["errors"].as_object().unwrap() {
        let reply = json!({"jsonrpc": "2.0", "id": 1, "error": e});
        schema
            .check_response(None, &reply)
            .unwrap_or_else(|err| panic!("components.errors.{name}: {err}"));
    }
    for m in doc["methods"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        for ex in m["examples"].as_array().into_iter().flatten() {
            let params: serde_json::Map<String, Value> = ex["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["name"].as_str().unwrap().to_string(), p["value"].clone()))
                .collect();
            schema
                .check_params(name, &Value::Object(params))
                .unwrap_or_else(|e| panic!("example of {name}: {e}"));
            let reply = json!({"jsonrpc": "2.0", "id": 1, "result": ex["result"]["value"]});
            schema
                .check_response(Some(name), &reply)
                .unwrap_or_else(|e| panic!("example of {name}: {e}"));
        }
    }
}

#[test]
fn rpc_discover_returns_the_document_in_both_framings() {
    // Needs no KVM: the worker answers rpc.discover either way.
    for framing in BOTH {
        let mut w = Worker::spawn(framing, &[]);
        let got = w.ok("rpc.discover", json!({}));
        assert_eq!(got, document());
        let info = w.ok("worker.info", json!({}));
        assert_eq!(info["name"], "zeroboot");
        assert_eq!(
            info["capabilities"]["framing"],
            match framing {
                rpc_client::Framing::Lsp => "lsp",
                rpc_client::Framing::Ndjson => "ndjson",
            }
        );
        w.shutdown();
    }
}

#[test]
fn the_readme_tables_match_the_document() {
    let doc = document();
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/README.md")).unwrap();
    let cell = |line: &str| line.split('|').nth(1).map(|c| c.trim().to_string());
    let table_codes: BTreeSet<i64> = readme
        .lines()
        .filter_map(cell)
        .filter_map(|c| c.parse().ok())
        .collect();
    let codes: BTreeSet<i64> = doc["components"]["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| e["code"].as_i64().unwrap())
        .collect();
    assert_eq!(table_codes, codes, "schema/README.md error table");
    let table_methods: BTreeSet<String> = readme
        .lines()
        .filter_map(cell)
        .filter_map(|c| c.split('`').nth(1).map(str::to_string))
        .filter(|m| {
            m.contains('.') || m.contains('/') || ["shutdown", "exit"].contains(&m.as_str())
        })
        .collect();
    let methods: BTreeSet<String> = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(table_methods, methods, "schema/README.md method table");
}
