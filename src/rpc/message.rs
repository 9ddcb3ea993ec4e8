//! JSON-RPC 2.0 envelopes: what a frame body holds (a request, a
//! notification, a batch of them, or something invalid), parsed in one pass
//! into a typed [`Call`], and the replies written back.
//!
//! One parse per message: the envelope's members are read by a visitor, and
//! when `params` comes after `method` (as every client writes them) the
//! params are deserialised straight into the method's own type from the
//! [method table](super::methods), the way lsp-server's `Request::extract`
//! hands a typed request over, without an intermediate tree. Only a message
//! that fails this pass (bad JSON, a wrong type, members in another order) is
//! read again, leniently, to say exactly what is wrong with it.
//!
//! Ids are kept as raw JSON text, so an id comes back exactly as the peer
//! spelled it (`1`, `-7`, `1.5`, `"abc"`, `null`).

use std::borrow::Cow;
use std::fmt;

use jsonrpsee::types::ErrorObjectOwned;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::errors;
use super::methods::{self, Call};

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
            Some(b'"' | b'-' | b'0'..=b'9' | b'n') => Some(Id(raw)),
            _ => None,
        }
    }

    /// The id as written.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// A canonical key, equal for ids that mean the same thing (`"a"` and
    /// `"\u0061"`, `1.5` and `1.50`), used to find a call to cancel and to
    /// refuse a second call with the id of one still running.
    pub fn key(&self) -> String {
        let text = self.0.get();
        let plain_string = text.starts_with('"') && !text.contains('\\');
        let plain_integer = text.len() <= 18 && text.bytes().all(|b| b.is_ascii_digit());
        if plain_string || plain_integer {
            return text.to_string();
        }
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
        /// The call, or why it cannot be made (unknown method, bad params).
        call: Result<Call, ErrorObjectOwned>,
    },
    /// A call without an id: no response, ever.
    Notification {
        /// The method, as named.
        method: String,
        /// The call; `None` for a method this worker does not know.
        call: Option<Result<Call, ErrorObjectOwned>>,
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

/// What a frame body holds. Made once per frame and moved once, to its
/// dispatch: boxing the single message would cost an allocation per call
/// to save a copy of a few hundred bytes.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
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
        Ok(t) => t.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r')),
        Err(e) => {
            return Message::Single(invalid(
                None,
                errors::parse_error("invalid_utf8", format!("body is not UTF-8: {e}")),
            ));
        }
    };
    if !text.starts_with('[') {
        return Message::Single(parse_one(text));
    }
    match serde_json::from_str::<Vec<&RawValue>>(text) {
        Ok(items) if items.is_empty() => Message::Single(invalid(
            None,
            errors::invalid_request("an empty batch is not a request"),
        )),
        Ok(items) => Message::Batch(items.iter().map(|i| parse_one(i.get())).collect()),
        Err(e) => Message::Single(invalid(
            None,
            errors::parse_error("parse_error", e.to_string()),
        )),
    }
}

fn invalid(id: Option<Id>, error: ErrorObjectOwned) -> Incoming {
    Incoming::Invalid {
        id: id.unwrap_or_else(Id::null),
        error,
    }
}

/// One JSON value of a message: the typed pass, or the lenient one when the
/// typed pass fails.
fn parse_one(text: &str) -> Incoming {
    match read_envelope(text, true) {
        Ok(envelope) => classify(envelope),
        Err(_) => match read_envelope(text, false) {
            Ok(envelope) => classify(envelope),
            Err(e) if e.is_syntax() || e.is_eof() => {
                invalid(None, errors::parse_error("parse_error", e.to_string()))
            }
            Err(_) => invalid(
                None,
                errors::invalid_request("a request must be a JSON object"),
            ),
        },
    }
}

/// The members of a request object that matter; the rest are ignored.
struct Envelope<'a> {
    jsonrpc: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    method: Option<Method<'a>>,
    params: Params<'a>,
    /// A `result` or `error` member: a response, if there is no method.
    answer: bool,
}

enum Method<'a> {
    /// Read as a string (typed pass).
    Name(Text<'a>),
    /// Kept raw (lenient pass).
    Raw(&'a RawValue),
}

/// The params as the one parse found them; `Parsed` moves on into the
/// message, so it is not boxed (as for [`Message`]).
#[allow(clippy::large_enum_variant)]
enum Params<'a> {
    Absent,
    Raw(&'a RawValue),
    Parsed(Call),
}

fn read_envelope(text: &str, typed: bool) -> Result<Envelope<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let envelope = EnvelopeSeed { typed }.deserialize(&mut de)?;
    de.end()?;
    Ok(envelope)
}

/// Reads a request object; `typed` parses `method` as a string and `params`
/// straight into the method's type when they come in that order.
struct EnvelopeSeed {
    typed: bool,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Member {
    Jsonrpc,
    Id,
    Method,
    Params,
    Result,
    Error,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed {
    type Value = Envelope<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Envelope<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut e = Envelope {
            jsonrpc: None,
            id: None,
            method: None,
            params: Params::Absent,
            answer: false,
        };
        while let Some(member) = map.next_key::<Member>()? {
            match member {
                Member::Jsonrpc => e.jsonrpc = Some(map.next_value()?),
                Member::Id => e.id = Some(map.next_value()?),
                Member::Method if self.typed => e.method = Some(Method::Name(map.next_value()?)),
                Member::Method => e.method = Some(Method::Raw(map.next_value()?)),
                Member::Params => {
                    e.params = match &e.method {
                        Some(Method::Name(Text(name))) if methods::known(name) => {
                            match map.next_value_seed(ParamsSeed(name))? {
                                Some(call) => Params::Parsed(call),
                                None => Params::Absent,
                            }
                        }
                        _ => Params::Raw(map.next_value()?),
                    }
                }
                Member::Result | Member::Error => {
                    map.next_value::<IgnoredAny>()?;
                    e.answer = true;
                }
                Member::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(e)
    }
}

/// A string borrowed from the message when it has no escapes (serde's own
/// `Cow<str>` always copies).
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The params of a known method, straight into its type: an object (or
/// null, meaning none); anything else fails the typed pass.
struct ParamsSeed<'m>(&'m str);

impl<'de> DeserializeSeed<'de> for ParamsSeed<'_> {
    type Value = Option<Call>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Call>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ParamsSeed<'_> {
    type Value = Option<Call>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("params as an object")
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<Call>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<Call>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<Call>, D::Error> {
        d.deserialize_map(ObjectOnly(self.0)).map(Some)
    }
}

/// Hands a params object to the method's type; an array (which serde's
/// derived structs would accept by position) is refused.
struct ObjectOnly<'m>(&'m str);

impl<'de> Visitor<'de> for ObjectOnly<'_> {
    type Value = Call;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("params as an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Call, A::Error> {
        methods::parse(self.0, de::value::MapAccessDeserializer::new(map))
            .unwrap_or_else(|| Err(de::Error::custom("unknown method")))
    }
}

/// Turns an envelope into what the session acts on.
fn classify(e: Envelope<'_>) -> Incoming {
    let id = match e.id {
        None => None,
        Some(raw) => match Id::from_raw(raw.to_owned()) {
            Some(id) => Some(id),
            None => {
                return invalid(
                    None,
                    errors::invalid_request("id must be a string, a number or null"),
                );
            }
        },
    };
    if e.jsonrpc.map(RawValue::get) != Some(r#""2.0""#) {
        return invalid(id, errors::invalid_request(r#"jsonrpc must be "2.0""#));
    }
    let method: Cow<'_, str> = match e.method {
        None if e.answer => return Incoming::Response,
        None => return invalid(id, errors::invalid_request("method is missing")),
        Some(Method::Name(Text(name))) => name,
        Some(Method::Raw(raw)) => match serde_json::from_str::<Text<'_>>(raw.get()) {
            Ok(Text(name)) => name,
            Err(_) => return invalid(id, errors::invalid_request("method must be a string")),
        },
    };
    let call = match e.params {
        Params::Parsed(call) => Some(Ok(call)),
        // `"params": null` is read as no params: some clients send it for void.
        Params::Raw(raw) if raw.get() != "null" => {
            let text = raw.get();
            if !(text.starts_with('{') || text.starts_with('[')) {
                return invalid(
                    id,
                    errors::invalid_request("params must be an object or an array"),
                );
            }
            call_from(&method, text)
        }
        Params::Raw(_) | Params::Absent => call_from(&method, "{}"),
    };
    match id {
        Some(id) => Incoming::Request {
            id,
            call: call.unwrap_or_else(|| Err(errors::method_not_found(&method))),
        },
        None => Incoming::Notification {
            method: method.into_owned(),
            call,
        },
    }
}

/// Parses params given as text (the lenient pass, or no params at all).
fn call_from(method: &str, params: &str) -> Option<Result<Call, ErrorObjectOwned>> {
    if !methods::known(method) {
        return None;
    }
    if params.starts_with('[') {
        return Some(Err(errors::invalid_params(
            "params must be an object: every method takes them by name",
        )));
    }
    let mut de = serde_json::Deserializer::from_str(params);
    let parsed = methods::parse(method, &mut de)?;
    Some(
        parsed
            .and_then(|call| de.end().map(|()| call))
            .map_err(|e| errors::invalid_params(e.to_string())),
    )
}

#[derive(Serialize)]
struct Success<'a, T> {
    jsonrpc: &'static str,
    id: &'a RawValue,
    result: &'a T,
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

/// The body of a success response, serialised once.
pub fn success<T: Serialize + ?Sized>(id: &Id, result: &T) -> Vec<u8> {
    to_vec(&Success {
        jsonrpc: "2.0",
        id: id.raw(),
        result: &result,
    })
}

/// The body of an error response.
pub fn failure(id: &Id, error: &ErrorObjectOwned) -> Vec<u8> {
    to_vec(&Failure {
        jsonrpc: "2.0",
        id: id.raw(),
        error,
    })
}

/// The body of a notification sent to the peer.
pub fn notification(method: &str, params: impl Serialize) -> Vec<u8> {
    to_vec(&Notification {
        jsonrpc: "2.0",
        method,
        params,
    })
}

/// The body of a batch response, from the bodies of its replies.
pub fn batch(replies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(replies.iter().map(|r| r.len() + 1).sum::<usize>() + 1);
    out.push(b'[');
    for (i, r) in replies.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r);
    }
    out.push(b']');
    out
}

fn to_vec(v: &impl Serialize) -> Vec<u8> {
    // What is serialised here is plain structs, strings, numbers and raw
    // JSON: it cannot fail. A failure would be a bug, answered as one.
    serde_json::to_vec(v).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a reply did not serialise");
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error: a reply did not serialise","data":{"kind":"internal","detail":"a reply did not serialise"}}}"#.to_vec()
    })
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

    fn request(i: Incoming) -> (Id, Result<Call, ErrorObjectOwned>) {
        match i {
            Incoming::Request { id, call } => (id, call),
            other => panic!("{other:?}"),
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.into()).unwrap()
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
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"worker.ping"}}"#);
            let (got, call) = request(single(&body));
            assert_eq!(got.raw().get(), id);
            assert!(matches!(call, Ok(Call::WorkerPing(_))), "{call:?}");
        }
    }

    #[test]
    fn id_keys_are_canonical() {
        let key = |text: &str| Id::from_raw(raw(text)).unwrap().key();
        assert_eq!(key(r#""\u0061""#), key(r#""a""#));
        assert_eq!(key("1.50"), key("1.5"));
        assert_ne!(key("1"), key(r#""1""#));
        assert_eq!(key("12"), "12");
    }

    #[test]
    fn illegal_ids_are_invalid_requests_with_null_id() {
        for id in ["true", "{}", "[1]"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"m"}}"#);
            assert_eq!(invalid_code(&single(&body)), (-32600, "null".into()));
        }
    }

    #[test]
    fn params_are_typed_in_one_pass_whatever_the_member_order() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"sandbox.kill","params":{"sandbox":"sb-1"}}"#,
            r#"{"params":{"sandbox":"sb-1"},"method":"sandbox.kill","id":1,"jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"sandbox.\u006bill","params":{"sandbox":"sb-1"}}"#,
        ] {
            match request(single(body)).1 {
                Ok(Call::SandboxKill(p)) => assert_eq!(p.sandbox, "sb-1"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn null_or_absent_params_are_no_params() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"worker.info","params":null}"#,
            r#"{"jsonrpc":"2.0","params":null,"id":1,"method":"worker.info"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"worker.info"}"#,
        ] {
            assert!(matches!(request(single(body)).1, Ok(Call::WorkerInfo(_))));
        }
        match single(r#"{"jsonrpc":"2.0","method":"exit","params":null}"#) {
            Incoming::Notification { call, .. } => assert!(matches!(call, Some(Ok(Call::Exit(_))))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_params_are_invalid_params_with_the_id() {
        for body in [
            r#"{"jsonrpc":"2.0","id":4,"method":"sandbox.kill","params":["sb-1"]}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"sandbox.kill","params":{"sandbox":5}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"worker.info","params":{"x":1}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"sandbox.kill"}"#,
            r#"{"params":{"sandbox":5},"jsonrpc":"2.0","id":4,"method":"sandbox.kill"}"#,
        ] {
            let (id, call) = request(single(body));
            assert_eq!(id.raw().get(), "4");
            assert_eq!(call.unwrap_err().code(), -32602, "{body}");
        }
    }

    #[test]
    fn unknown_methods_are_method_not_found_and_unknown_notifications_are_none() {
        let (_, call) = request(single(r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#));
        assert_eq!(call.unwrap_err().code(), -32601);
        match single(r#"{"jsonrpc":"2.0","method":"nope","params":[1]}"#) {
            Incoming::Notification { method, call } => {
                assert_eq!(method, "nope");
                assert!(call.is_none());
            }
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
            invalid_code(&single(r#"{"jsonrpc":"2.0","id":1,"method":5}"#)),
            (-32600, "1".into())
        );
        for params in ["3", r#""x""#, "true"] {
            let body =
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"worker.info","params":{params}}}"#);
            assert_eq!(invalid_code(&single(&body)).0, -32600, "{params}");
        }
        assert_eq!(
            invalid_code(&single(r#"{"jsonrpc":"2.0","id":1}"#)).0,
            -32600
        );
        match parse(b"\xff\xfe") {
            Message::Single(i) => assert_eq!(invalid_code(&i).0, -32700),
            Message::Batch(_) => panic!(),
        }
        match parse(b" [] ") {
            Message::Single(i) => assert_eq!(invalid_code(&i).0, -32600),
            Message::Batch(_) => panic!(),
        }
        match parse(b"[1,") {
            Message::Single(i) => assert_eq!(invalid_code(&i).0, -32700),
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
        let Message::Batch(items) = parse(
            br#"[1, {"jsonrpc":"2.0","method":"worker.ping"}, {"jsonrpc":"2.0","id":2,"method":"sandbox.kill","params":[1]}]"#,
        ) else {
            panic!()
        };
        assert_eq!(items.len(), 3);
        assert!(matches!(items[0], Incoming::Invalid { .. }));
        assert!(matches!(items[1], Incoming::Notification { .. }));
        assert!(matches!(items[2], Incoming::Request { call: Err(_), .. }));
    }

    #[test]
    fn replies_are_well_formed() {
        let id = Id::from_raw(raw(r#""q""#)).unwrap();
        let ok = success(&id, &raw("{\"a\":1}"));
        assert_eq!(ok, br#"{"jsonrpc":"2.0","id":"q","result":{"a":1}}"#);
        let err = failure(&Id::null(), &errors::invalid_request("x"));
        let v: serde_json::Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(v["id"], serde_json::Value::Null);
        assert_eq!(v["error"]["code"], -32600);
        let n = notification("sandbox.output", serde_json::json!({"a": 1}));
        assert_eq!(
            n,
            br#"{"jsonrpc":"2.0","method":"sandbox.output","params":{"a":1}}"#
        );
        assert_eq!(batch(&[b"1".to_vec(), b"{}".to_vec()]), b"[1,{}]");
    }
}
