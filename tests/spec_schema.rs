//! schema/template-spec.json and the spec parser agree: every example the
//! parser accepts validates against the schema, every one it refuses is
//! refused by the schema too, and openrpc.json carries the same schema as
//! `components.schemas.TemplateSpec`.

use jsonschema::Draft;
use serde_json::{Value, json};
use std::path::Path;
use zeroboot::spec::Spec;

fn schema() -> Value {
    let path = format!("{}/schema/template-spec.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn validator() -> jsonschema::Validator {
    let mut s = schema();
    s.as_object_mut().unwrap().remove("$schema");
    jsonschema::options()
        .with_draft(Draft::Draft7)
        .build(&s)
        .expect("the spec schema compiles")
}

#[test]
fn parser_and_schema_accept_the_same_specs() {
    let v = validator();
    let good = [
        json!({}),
        json!({"base": "python", "memory_mib": 128}),
        json!({"base": {"oci": "img.tar"}, "user": "1000:1000", "cwd": "/srv", "python": {"preload": ["os"]}}),
        json!({"python": {"packages": ["numpy==2.*"], "preload": ["numpy", "os.path"], "stdlib": "full"}}),
        json!({"python": {"packages": ["six"], "no_index": true, "find_links": "wheels"}}),
        json!({"python": {"index_url": "https://pypi.example/simple"}}),
        json!({"debian": {"packages": ["nodejs", "libc6=2.36-9+deb12u9"]}}),
        json!({"files": [{"from": "data", "to": "/data", "mode": "0644"}]}),
        json!({"env": {"A_B": "x y"}, "warmup": ["echo one\necho two"]}),
        json!({"network": false}),
        json!({"network": {"allow": ["pypi.org:443", "10.0.0.0/8"], "deny": ["10.9.0.0/16"], "max_connections": 8}}),
    ];
    for spec in good {
        assert!(v.is_valid(&spec), "schema refuses {spec}");
        Spec::from_json(&spec, Path::new("/")).unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
}

#[test]
fn parser_and_schema_refuse_the_same_specs() {
    let v = validator();
    let bad = [
        json!({"memory": 512}),
        json!({"memory_mib": 64}),
        json!({"memory_mib": 4096}),
        json!({"memory_mib": "512"}),
        json!({"base": "ubuntu"}),
        json!({"base": {"docker": "x"}}),
        json!({"base": {"oci": "x", "extra": 1}}),
        json!({"python": {"package": ["numpy"]}}),
        json!({"python": {"packages": ["--index-url=http://evil"]}}),
        json!({"python": {"preload": ["os; import sys"]}}),
        json!({"python": {"stdlib": "tiny"}}),
        json!({"python": {"index_url": "ftp://x"}}),
        json!({"debian": {"packages": ["NodeJS"]}}),
        json!({"files": [{"from": "a"}]}),
        json!({"files": [{"from": "a", "to": "rel"}]}),
        json!({"files": [{"from": "a", "to": "/a", "mode": "999"}]}),
        json!({"env": {"1A": "x"}}),
        json!({"env": {"A": "x\ny"}}),
        json!({"cwd": "relative"}),
        json!({"user": "Root!"}),
        json!({"warmup": [""]}),
        json!({"warmup": "echo"}),
        json!({"network": true}),
        json!({"network": {"allow": "pypi.org"}}),
        json!({"network": {"allow": [""]}}),
        json!({"network": {"max_connections": 0}}),
        json!({"network": {"max_bytes_per_sec": 10}}),
        json!({"network": {"alow": []}}),
    ];
    for spec in bad {
        assert!(!v.is_valid(&spec), "schema accepts {spec}");
        assert!(
            Spec::from_json(&spec, Path::new("/")).is_err(),
            "parser accepts {spec}"
        );
    }
}

#[test]
fn openrpc_carries_the_same_schema() {
    let path = format!("{}/schema/openrpc.json", env!("CARGO_MANIFEST_DIR"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut standalone = schema();
    let obj = standalone.as_object_mut().unwrap();
    obj.remove("$schema");
    obj.remove("$id");
    assert_eq!(doc["components"]["schemas"]["TemplateSpec"], standalone);
}
