//! JSON-RPC 2.0 envelopes: what a frame body holds (a request, a notification,
//! a batch of them, or something invalid), and the replies written back.
//!
//! Ids and params are kept as raw JSON text, so an id comes back exactly as the
//! peer spelled it (`1`, `-7`, `1.5`, `"abc"`, `null`) and params reach the
//! method untouched.

use std::collections::BTreeMap;

use jsonrpsee::types::ErrorObjectOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use super::errors;

/// A request id as the peer wrote it: a string, a number or null.
#[derive(Clone, Debug)]
pub struct Id(Box<RawValue>);

impl Id {
    /// The null id, used when a request's own id could not be read.
    pub fn null() -> Id {
        Id(RawValue::from_string("null".into()).expect("null is JSON"))
    }

    /// Accepts the raw value of an `id` member if it is a legal id.
    pub fn from_raw(raw: Box<RawValue>) -> Option<Id> {
        match raw.get().as_bytes().first() {
            Some(b'"' | b'-' | b'0'..=b'9') => Some(Id(raw)),
            Some(b'n') => Some(Id(raw)),
            _ => None,
        }
    }

    /// The id as written.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// A canonical key, equal for ids that mean the same thing (`"a"` and
    /// `"\u0061"`, `1` and `1`), used to find a call to cancel.
    pub fn key(&self) -> String {
        let text = self.0.get();
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => v.to_string(),
            Err(_) => text.to_string(),
        }
    }
}

/// One element of a message.
#[derive(Debug)]
pub enum Incoming {
    /// A call that wants a response.
    Request {
        /// Its id.
        id: Id,
        /// The method.
        method: String,
        /// Raw params (an object or an array), if given.
        params: Option<Box<RawValue>>,
    },
    /// A call without an id: no response, ever.
    Notification {
        /// The method.
        method: String,
        /// Raw params, if given.
        params: Option<Box<RawValue>>,
    },
    /// A response from the peer (this worker never sends requests, so it is
    /// logged and dropped).
    Response,
    /// Not a valid request: answered with this error.
    Invalid {
        /// The id, when one could be read; null otherwise.
        id: Id,
        /// The error to send.
        error: ErrorObjectOwned,
    },
}

/// What a frame body holds.
#[derive(Debug)]
pub enum Message {
    /// One element.
    Single(Incoming),
    /// A non-empty batch.
    Batch(Vec<Incoming>),
}

/// Interprets a frame body. Never fails: whatever is wrong becomes an
/// [`Incoming::Invalid`] carrying the error to answer with.
pub fn parse(body: &[u8]) -> Message {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            return Message::Single(Incoming::Invalid {
                id: Id::null(),
                error: errors::parse_error("invalid_utf8", format!("body is not UTF-8: {e}")),
            });
        }
    };
    let raw: Box<RawValue> = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            return Message::Single(Incoming::Invalid {
                id: Id::null(),
                error: errors::parse_error("parse_error", e.to_string()),
            });
        }
    };
    if raw.get().starts_with('[') {
        let items: Vec<Box<RawValue>> = match serde_json::from_str(raw.get()) {
            Ok(items) => items,
            Err(e) => {
                return Message::Single(Incoming::Invalid {
                    id: Id::null(),
                    error: errors::parse_error("parse_error", e.to_string()),
                });
            }
        };
        if items.is_empty() {
            return Message::Single(Incoming::Invalid {
                id: Id::null(),
                error: errors::invalid_request("an empty batch is not a request"),
            });
        }
        return Message::Batch(items.iter().map(|i| classify(i)).collect());
    }
    Message::Single(classify(&raw))
}

/// Classifies one JSON value of a message.
fn classify(raw: &RawValue) -> Incoming {
    if !raw.get().starts_with('{') {
        return Incoming::Invalid {
            id: Id::null(),
            error: errors::invalid_request("a request must be a JSON object"),
        };
    }
    let mut members: BTreeMap<String, Box<RawValue>> = match serde_json::from_str(raw.get()) {
        Ok(m) => m,
        Err(e) => {
            return Incoming::Invalid {
                id: Id::null(),
                error: errors::parse_error("parse_error", e.to_string()),
            };
        }
    };
    let id = match members.remove("id") {
        None => None,
        Some(raw_id) => match Id::from_raw(raw_id) {
            Some(id) => Some(id),
            None => {
                return Incoming::Invalid {
                    id: Id::null(),
                    error: errors::invalid_request("id must be a string, a number or null"),
                };
            }
        },
    };
    let invalid = |id: Option<Id>, why: &str| Incoming::Invalid {
        id: id.unwrap_or_else(Id::null),
        error: errors::invalid_request(why),
    };
    match members.get("jsonrpc").map(|v| v.get()) {
        Some(r#""2.0""#) => {}
        _ => return invalid(id, r#"jsonrpc must be "2.0""#),
    }
    let Some(method) = members.remove("method") else {
        if members.contains_key("result") || members.contains_key("error") {
            return Incoming::Response;
        }
        return invalid(id, "method is missing");
    };
    let Ok(method) = serde_json::from_str::<String>(method.get()) else {
        return invalid(id, "method must be a string");
    };
    // `"params": null` is read as no params: some clients send it for void.
    let params = members.remove("params").filter(|p| p.get() != "null");
    if let Some(p) = &params
        && !(p.get().starts_with('{') || p.get().starts_with('['))
    {
        return invalid(id, "params must be an object or an array");
    }
    match id {
        Some(id) => Incoming::Request { id, method, params },
        None => Incoming::Notification { method, params },
    }
}

#[derive(Serialize)]
struct Success<'a> {
    jsonrpc: &'static str,
    id: &'a RawValue,
    result: &'a RawValue,
}

#[derive(Serialize)]
struct Failure<'a> {
    jsonrpc: &'static str,
    id: &'a RawValue,
    error: &'a ErrorObjectOwned,
}

#[derive(Serialize)]
struct Notification<'a, P> {
    jsonrpc: &'static str,
    method: &'a str,
    params: P,
}

/// The body of a success response.
pub fn success(id: &Id, result: &RawValue) -> Box<RawValue> {
    to_raw(&Success {
        jsonrpc: "2.0",
        id: id.raw(),
        result,
    })
}

/// The body of an error response.
pub fn failure(id: &Id, error: &ErrorObjectOwned) -> Box<RawValue> {
    to_raw(&Failure {
        jsonrpc: "2.0",
        id: id.raw(),
        error,
    })
}

/// The body of a notification sent to the peer.
pub fn notification(method: &str, params: impl Serialize) -> Box<RawValue> {
    to_raw(&Notification {
        jsonrpc: "2.0",
        method,
        params,
    })
}

/// The body of a batch response.
pub fn batch(replies: &[Box<RawValue>]) -> Box<RawValue> {
    to_raw(&replies)
}

fn to_raw(v: &impl Serialize) -> Box<RawValue> {
    // Serialising these plain structs of strings and raw JSON cannot fail.
    serde_json::value::to_raw_value(v).expect("a reply serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(body: &str) -> Incoming {
        match parse(body.as_bytes()) {
            Message::Single(i) => i,
            Message::Batch(_) => panic!("batch"),
        }
    }

    fn invalid_code(i: &Incoming) -> (i32, String) {
        match i {
            Incoming::Invalid { id, error } => (error.code(), id.raw().get().to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_of_every_legal_type_are_kept_verbatim() {
        for id in [
            "1",
            "-7",
            "0",
            "1.5",
            "1e3",
            r#""abc""#,
            r#""""#,
            "null",
            "18446744073709551616",
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"m"}}"#);
            match single(&body) {
                Incoming::Request {
                    id: got,
                    method,
                    params,
                } => {
                    assert_eq!(got.raw().get(), id);
                    assert_eq!(method, "m");
                    assert!(params.is_none());
                }
                other => panic!("{id}: {other:?}"),
            }
        }
    }

    #[test]
    fn id_keys_are_canonical() {
        let a = Id::from_raw(RawValue::from_string(r#""\u0061""#.into()).unwrap()).unwrap();
        let b = Id::from_raw(RawValue::from_string(r#""a""#.into()).unwrap()).unwrap();
        assert_eq!(a.key(), b.key());
        let n = Id::from_raw(RawValue::from_string("1".into()).unwrap()).unwrap();
        assert_ne!(
            n.key(),
            Id::from_raw(RawValue::from_string(r#""1""#.into()).unwrap())
                .unwrap()
                .key()
        );
    }

    #[test]
    fn illegal_ids_are_invalid_requests_with_null_id() {
        for id in ["true", "{}", "[1]"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"m"}}"#);
            assert_eq!(invalid_code(&single(&body)), (-32600, "null".into()));
        }
    }

    #[test]
    fn null_params_are_no_params() {
        match single(r#"{"jsonrpc":"2.0","method":"exit","params":null}"#) {
            Incoming::Notification { params, .. } => assert!(params.is_none()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn notifications_have_no_id() {
        match single(r#"{"jsonrpc":"2.0","method":"exit"}"#) {
            Incoming::Notification { method, .. } => assert_eq!(method, "exit"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(invalid_code(&single("{")).0, -32700);
        assert_eq!(invalid_code(&single("42")).0, -32600);
        assert_eq!(invalid_code(&single(r#""str""#)).0, -32600);
        assert_eq!(invalid_code(&single("null")).0, -32600);
        assert_eq!(
            invalid_code(&single(r#"{"id":3,"method":"m"}"#)),
            (-32600, "3".into())
        );
        assert_eq!(
            invalid_code(&single(r#"{"jsonrpc":"1.0","id":"x","method":"m"}"#)),
            (-32600, r#""x""#.into())
        );
        assert_eq!(
            invalid_code(&single(r#"{"jsonrpc":"2.0","id":1,"method":5}"#)).0,
            -32600
        );
        assert_eq!(
            invalid_code(&single(
                r#"{"jsonrpc":"2.0","id":1,"method":"m","params":3}"#
            ))
            .0,
            -32600
        );
        assert_eq!(
            invalid_code(&single(r#"{"jsonrpc":"2.0","id":1}"#)).0,
            -32600
        );
        match parse(b"\xff\xfe") {
            Message::Single(i) => assert_eq!(invalid_code(&i).0, -32700),
            Message::Batch(_) => panic!(),
        }
        match parse(b"[]") {
            Message::Single(i) => assert_eq!(invalid_code(&i).0, -32600),
            Message::Batch(_) => panic!(),
        }
    }

    #[test]
    fn responses_from_the_peer_are_recognised() {
        assert!(matches!(
            single(r#"{"jsonrpc":"2.0","id":1,"result":null}"#),
            Incoming::Response
        ));
    }

    #[test]
    fn batches_classify_each_element() {
        let Message::Batch(items) =
            parse(br#"[1, {"jsonrpc":"2.0","method":"n"}, {"jsonrpc":"2.0","id":2,"method":"r","params":[1]}]"#)
        else {
            panic!()
        };
        assert_eq!(items.len(), 3);
        assert!(matches!(items[0], Incoming::Invalid { .. }));
        assert!(matches!(items[1], Incoming::Notification { .. }));
        assert!(matches!(items[2], Incoming::Request { .. }));
    }

    #[test]
    fn replies_are_well_formed() {
        let id = Id::from_raw(RawValue::from_string(r#""q""#.into()).unwrap()).unwrap();
        let ok = success(&id, &RawValue::from_string("{\"a\":1}".into()).unwrap());
        assert_eq!(ok.get(), r#"{"jsonrpc":"2.0","id":"q","result":{"a":1}}"#);
        let err = failure(&Id::null(), &errors::invalid_request("x"));
        let v: serde_json::Value = serde_json::from_str(err.get()).unwrap();
        assert_eq!(v["id"], serde_json::Value::Null);
        assert_eq!(v["error"]["code"], -32600);
        let n = notification("sandbox.output", serde_json::json!({"a": 1}));
        assert_eq!(
            n.get(),
            r#"{"jsonrpc":"2.0","method":"sandbox.output","params":{"a":1}}"#
        );
    }
}
