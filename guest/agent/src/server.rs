//! The request loop: announce Ready, then answer each host request with its
//! final frame (after any Output frames an exec or a run streamed).

use crate::exec::{CodeRequest, ExecRequest, Runner};
use crate::files::Files;
use crate::frames::{self, Failure};
use crate::reaper;
use crate::transport::{Transport, TransportError};
use zeroboot_proto::{
    AgentErrorCode, Exec, FILE_MORE, HEADER_LEN, Header, Kind, NetUp, ReadFile, RunCode, WriteFile,
};

/// Serves requests until the transport fails.
pub fn serve(t: &mut dyn Transport, runner: &mut Runner) -> TransportError {
    let mut len = frames::ready(t.buf());
    let mut files = Files::default();
    loop {
        // Reap before going idle (the snapshot is taken at Ready) and again
        // when a request arrives, so zombies never outlive a request.
        if runner.system {
            reaper::reap_orphans();
        }
        let header = match t.exchange(len) {
            Ok(h) => h,
            Err(e) => return e,
        };
        if runner.system {
            reaper::reap_orphans(); // orphans that ended while the agent waited
        }
        len = match handle(t, runner, &mut files, header) {
            Ok(len) => len,
            Err(e) => return e,
        };
    }
}

fn bad_request(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(AgentErrorCode::BadRequest, format!("malformed {what}: {e}"))
}

/// Answers one request; returns the final frame's length.
fn handle(
    t: &mut dyn Transport,
    runner: &mut Runner,
    files: &mut Files,
    header: Header,
) -> Result<usize, TransportError> {
    if !matches!(header.kind, Kind::WriteFile | Kind::ReadFile) {
        files.abandon();
    }
    let payload = &t.buf()[HEADER_LEN..HEADER_LEN + header.len as usize];
    let outcome = match header.kind {
        Kind::Exec => match Exec::decode(payload) {
            Ok(e) => {
                let req = ExecRequest::from_wire(&e);
                return runner.run(t, req);
            }
            Err(e) => Err(bad_request("exec", e)),
        },
        Kind::RunCode => match RunCode::decode(payload) {
            Ok(r) => {
                let req = CodeRequest::from_wire(&r);
                return runner.run_code(t, req);
            }
            Err(e) => Err(bad_request("run_code", e)),
        },
        Kind::ListContexts => return Ok(runner.list_contexts(t.buf())),
        Kind::WriteFile => match WriteFile::decode(payload) {
            Ok(chunk) => files.write(&chunk, header.flags).map(|()| None),
            Err(e) => Err(bad_request("write_file", e)),
        },
        Kind::ReadFile => match ReadFile::decode(payload) {
            Ok(req) => {
                // The reply is built in place over the request: keep its path.
                let path = req.path.to_vec();
                let req = ReadFile { path: &path, ..req };
                files
                    .read(&req, header.flags, &mut t.buf()[HEADER_LEN..])
                    .map(Some)
            }
            Err(e) => Err(bad_request("read_file", e)),
        },
        Kind::NetUp => match NetUp::decode(payload) {
            // A fork of a snapshot taken with the network up: every
            // sandbox's interface settings are the same, so it is done.
            Ok(_) if runner.net.is_some() => Ok(None),
            Ok(req) => crate::net::up(&req).map(|net| {
                runner.net = Some(net);
                None
            }),
            Err(e) => Err(bad_request("net_up", e)),
        },
        other => Err(Failure::new(
            AgentErrorCode::Unsupported,
            format!("{other:?} is not a request"),
        )),
    };
    let buf = t.buf();
    Ok(match outcome {
        Ok(None) => frames::done(buf),
        Ok(Some((n, more))) => {
            let flags = if more { FILE_MORE } else { 0 };
            frames::in_place(buf, Kind::FileData, flags, n)
        }
        Err(f) => f.encode(buf),
    })
}
