//! Checks messages against schema/openrpc.json: every response's result
//! against its method's result schema, every error against
//! `components.schemas.ErrorObject` and the method's declared errors, every
//! notification against `x-notifications`, every request's params against the
//! method's content descriptors. Shared by the `rpc_*` integration tests.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};

use jsonschema::{Draft, Validator};
use serde_json::{Map, Value, json};

/// The OpenRPC document, as the tests read it from the source tree.
pub fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/openrpc.json");
    let text = std::fs::read_to_string(path).expect("schema/openrpc.json exists");
    serde_json::from_str(&text).expect("schema/openrpc.json is JSON")
}

/// Compiled validators for every method, notification and error.
pub struct RpcSchema {
    results: HashMap<String, Validator>,
    params: HashMap<String, Validator>,
    notifications: HashMap<String, Validator>,
    /// Error codes each method declares.
    codes: HashMap<String, BTreeSet<i64>>,
    error: Validator,
}

/// Rewrites `#/components/schemas/X` references to `#/definitions/X`, so a
/// sub-schema compiled on its own with the components as `definitions`
/// resolves them.
fn rebase(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => {
                            Value::String(r.replace("#/components/schemas/", "#/definitions/"))
                        }
                        _ => rebase(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(rebase).collect()),
        other => other.clone(),
    }
}

fn compile(schema: &Value, definitions: &Value) -> Validator {
    let root = json!({"allOf": [rebase(schema)], "definitions": definitions});
    jsonschema::options()
        .with_draft(Draft::Draft7)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}\n{root:#}"))
}

/// A params object schema from a list of content descriptors.
fn params_schema(descriptors: &[Value]) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for d in descriptors {
        let name = d["name"].as_str().expect("descriptor name").to_string();
        props.insert(name.clone(), d["schema"].clone());
        if d["required"] == true {
            required.push(Value::String(name));
        }
    }
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

fn errors_of(doc: &Value, method: &Value) -> BTreeSet<i64> {
    let mut codes = BTreeSet::new();
    for e in method["errors"].as_array().into_iter().flatten() {
        let e = match e["$ref"].as_str() {
            Some(r) => {
                let name = r
                    .strip_prefix("#/components/errors/")
                    .expect("errors refer to components.errors");
                &doc["components"]["errors"][name]
            }
            None => e,
        };
        codes.insert(e["code"].as_i64().expect("error code"));
    }
    codes
}

impl RpcSchema {
    /// Compiles everything in the document.
    pub fn load() -> RpcSchema {
        let doc = document();
        let definitions = rebase(&doc["components"]["schemas"]);
        let mut results = HashMap::new();
        let mut params = HashMap::new();
        let mut codes = HashMap::new();
        for m in doc["methods"].as_array().expect("methods") {
            let name = m["name"].as_str().expect("method name").to_string();
            if m.get("result").is_some() {
                results.insert(name.clone(), compile(&m["result"]["schema"], &definitions));
            }
            let descriptors = m["params"].as_array().expect("params");
            params.insert(
                name.clone(),
                compile(&params_schema(descriptors), &definitions),
            );
            codes.insert(name, errors_of(&doc, m));
        }
        let mut notifications = HashMap::new();
        for n in doc["x-notifications"].as_array().expect("x-notifications") {
            let name = n["name"].as_str().expect("notification name").to_string();
            let descriptors = n["params"].as_array().expect("params");
            notifications.insert(name, compile(&params_schema(descriptors), &definitions));
        }
        let error = compile(
            &json!({"$ref": "#/components/schemas/ErrorObject"}),
            &definitions,
        );
        RpcSchema {
            results,
            params,
            notifications,
            codes,
            error,
        }
    }

    fn run(v: &Validator, instance: &Value, what: &str) -> Result<(), String> {
        let errors: Vec<String> = v
            .iter_errors(instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what} does not match the schema: {errors:?}\n{instance}"
            ))
        }
    }

    /// Checks the params of a request the test is about to send.
    pub fn check_params(&self, method: &str, params: &Value) -> Result<(), String> {
        match self.params.get(method) {
            Some(v) => Self::run(v, params, &format!("params of {method}")),
            None => Err(format!("{method} is not in the schema")),
        }
    }

    /// Checks one response (not a batch); `method` is the method of the
    /// request it answers, when known.
    pub fn check_response(&self, method: Option<&str>, msg: &Value) -> Result<(), String> {
        let obj = msg.as_object().ok_or("a response must be an object")?;
        if obj.get("jsonrpc") != Some(&json!("2.0")) {
            return Err(format!("jsonrpc is not \"2.0\": {msg}"));
        }
        match obj.get("id") {
            Some(Value::String(_) | Value::Number(_) | Value::Null) => {}
            _ => return Err(format!("bad or missing id: {msg}")),
        }
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        match (obj.get("result"), obj.get("error")) {
            (Some(result), None) => {
                if keys != BTreeSet::from(["jsonrpc", "id", "result"]) {
                    return Err(format!("unexpected members: {msg}"));
                }
                if let Some(m) = method {
                    let v = self
                        .results
                        .get(m)
                        .ok_or_else(|| format!("{m} has no result in the schema"))?;
                    Self::run(v, result, &format!("result of {m}"))?;
                }
                Ok(())
            }
            (None, Some(error)) => {
                if keys != BTreeSet::from(["jsonrpc", "id", "error"]) {
                    return Err(format!("unexpected members: {msg}"));
                }
                Self::run(&self.error, error, "error")?;
                if let Some(m) = method
                    && let Some(codes) = self.codes.get(m)
                {
                    let code = error["code"].as_i64().unwrap_or_default();
                    if !codes.contains(&code) {
                        return Err(format!("{m} does not declare error {code}: {msg}"));
                    }
                }
                Ok(())
            }
            _ => Err(format!("exactly one of result and error: {msg}")),
        }
    }

    /// Checks a notification sent by the worker.
    pub fn check_notification(&self, msg: &Value) -> Result<(), String> {
        let obj = msg.as_object().ok_or("a notification must be an object")?;
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        if keys != BTreeSet::from(["jsonrpc", "method", "params"]) || obj["jsonrpc"] != "2.0" {
            return Err(format!("bad notification envelope: {msg}"));
        }
        let method = obj["method"].as_str().ok_or("method must be a string")?;
        let v = self
            .notifications
            .get(method)
            .ok_or_else(|| format!("notification {method} is not in the schema"))?;
        Self::run(v, &obj["params"], &format!("params of {method}"))
    }
}
