//! The host's half of a conversation, run on the vCPU's thread: write a
//! request, run until the doorbell, interpret the guest's frame, repeat until a
//! final frame arrives.

use zeroboot_proto::{
    AgentError as WireAgentError, CodeEnd, ContextList, EXIT_TIMED_OUT, ExitStatus, Kind, Language,
    Output, RESUME_STOP_OUTPUT, Ready, Stream, VERSION, encode_frame,
};

use zeroboot_proto::Header;

use super::network::{FramePort, Unplugged, answer_frames};
use super::{AgentError, FrameLink, Mailbox};
use crate::vmm::{Stop, Vm};

/// How an exec ended inside the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEnd {
    /// Exit code (when no signal).
    pub code: i32,
    /// Terminating signal, 0 if none.
    pub signal: i32,
    /// The agent's own deadline killed the program.
    pub timed_out: bool,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
}

impl ExecEnd {
    fn of(status: ExitStatus, truncated: bool) -> ExecEnd {
        ExecEnd {
            code: status.code,
            signal: status.signal,
            timed_out: status.flags & EXIT_TIMED_OUT != 0,
            truncated,
        }
    }
}

/// An uncaught exception in run code (texts as the guest sent them, made
/// valid UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeFailure {
    /// The exception's type.
    pub name: String,
    /// Its message.
    pub value: String,
    /// The formatted traceback.
    pub traceback: String,
}

/// How a code run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEnd {
    /// Status and output flags, as for an exec.
    pub end: ExecEnd,
    /// The last expression's value as text.
    pub result: Option<String>,
    /// The uncaught exception.
    pub error: Option<CodeFailure>,
}

/// A persistent context alive in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextInfo {
    /// Its name.
    pub name: String,
    /// Its language.
    pub language: Language,
}

/// Runs a freshly booted guest until it has registered its mailbox and said
/// Ready. Returns the mailbox; the vCPU is left stopped in the Ready doorbell.
pub fn boot(vm: &mut Vm) -> Result<(Mailbox, Ready), AgentError> {
    let mailbox = match vm.run()? {
        Stop::Mailbox(pfn) => Mailbox::register(vm.ram(), pfn)?,
        other => return Err(unexpected_stop(other, "mailbox registration")),
    };
    let mut payload = Vec::new();
    match vm.run()? {
        Stop::Doorbell => {}
        other => return Err(unexpected_stop(other, "the Ready frame")),
    }
    let header = mailbox.read(vm.ram(), &mut payload)?;
    if header.kind != Kind::Ready {
        return Err(AgentError::Protocol(format!(
            "expected Ready, got {:?}",
            header.kind
        )));
    }
    let ready = Ready::decode(&payload)?;
    if ready.version != VERSION {
        return Err(AgentError::Protocol(format!(
            "guest speaks protocol {}, host {VERSION}",
            ready.version
        )));
    }
    Ok((mailbox, ready))
}

fn unexpected_stop(stop: Stop, waiting_for: &str) -> AgentError {
    match stop {
        Stop::Crashed(why) => AgentError::Crashed(why),
        Stop::Interrupted => AgentError::Interrupted,
        Stop::MemoryLimit(over) => AgentError::MemoryLimit(over),
        other => AgentError::Protocol(format!(
            "guest gave {other:?} while the host waited for {waiting_for}"
        )),
    }
}

/// Writes `request`, runs to the doorbell and reads the guest's frame.
pub(super) fn round_trip(
    vm: &mut Vm,
    mailbox: &Mailbox,
    request: &[u8],
    payload: &mut Vec<u8>,
) -> Result<Header, AgentError> {
    mailbox.write(vm.ram(), request)?;
    match vm.run()? {
        Stop::Doorbell => mailbox.read(vm.ram(), payload),
        other => Err(unexpected_stop(other, "a reply")),
    }
}

pub(super) fn agent_error(payload: &[u8]) -> AgentError {
    match WireAgentError::decode(payload) {
        Ok(e) => AgentError::Agent {
            code: e.code,
            message: String::from_utf8_lossy(e.message).into_owned(),
        },
        Err(w) => w.into(),
    }
}

/// Passes what fits under the cap to `on_output`; true when something was cut.
fn deliver(
    out: Output<'_>,
    cap: usize,
    delivered: &mut usize,
    on_output: &mut dyn FnMut(Stream, &[u8]),
) -> bool {
    let take = out.data.len().min(cap.saturating_sub(*delivered));
    if take > 0 {
        on_output(out.stream, &out.data[..take]);
        *delivered += take;
    }
    take < out.data.len()
}

/// Output passed on so far, against the cap.
struct Delivery<'a> {
    cap: usize,
    delivered: usize,
    truncated: bool,
    on_output: &'a mut dyn FnMut(Stream, &[u8]),
}

impl Delivery<'_> {
    fn take(&mut self, out: Output<'_>) {
        self.truncated |= deliver(out, self.cap, &mut self.delivered, self.on_output);
    }
}

/// Sends a request answered like an exec (Output frames, each resumed, then
/// one final frame of kind `last`) and returns the final frame's payload.
/// Output chunks go to `delivery` until its cap; the guest's network frames,
/// if it has a TAP link, go through `net`.
fn stream_until(
    link: &mut dyn FrameLink,
    request: &[u8],
    last: Kind,
    delivery: &mut Delivery<'_>,
    net: Option<&dyn FramePort>,
) -> Result<Vec<u8>, AgentError> {
    let mut payload = Vec::new();
    let mut next = request.to_vec();
    loop {
        let header = link.round_trip(&next, &mut payload)?;
        match header.kind {
            Kind::Output => {
                delivery.take(Output::decode(&payload)?);
                let flags = if delivery.truncated {
                    RESUME_STOP_OUTPUT
                } else {
                    0
                };
                next.resize(zeroboot_proto::HEADER_LEN, 0);
                encode_frame(&mut next, Kind::Resume, flags, |_| Ok(()))?;
            }
            k if k == last => return Ok(payload),
            Kind::GuestFrames => {
                let port = net.unwrap_or(&Unplugged);
                answer_frames(port, &payload, link.capacity(), &mut next)?;
            }
            Kind::Error => return Err(agent_error(&payload)),
            other => {
                return Err(AgentError::Protocol(format!(
                    "unexpected {other:?} frame while waiting for {last:?}"
                )));
            }
        }
    }
}

/// Sends an Exec frame and runs the guest to its Exit, passing output chunks
/// to `on_output` until `output_cap` bytes in all have been passed. The
/// guest's network frames, if it has a TAP link, go through `net`.
pub fn exec(
    link: &mut dyn FrameLink,
    request: &[u8],
    output_cap: usize,
    on_output: &mut dyn FnMut(Stream, &[u8]),
    net: Option<&dyn FramePort>,
) -> Result<ExecEnd, AgentError> {
    let mut delivery = Delivery {
        cap: output_cap,
        delivered: 0,
        truncated: false,
        on_output,
    };
    let payload = stream_until(link, request, Kind::Exit, &mut delivery, net)?;
    let (status, tail) = ExitStatus::decode(&payload)?;
    if let Some(out) = tail {
        delivery.take(out);
    }
    Ok(ExecEnd::of(status, delivery.truncated))
}

/// Sends a RunCode frame and runs the guest to its CodeEnd; output as for
/// [`exec`], network frames too.
pub fn run_code(
    link: &mut dyn FrameLink,
    request: &[u8],
    output_cap: usize,
    on_output: &mut dyn FnMut(Stream, &[u8]),
    net: Option<&dyn FramePort>,
) -> Result<RunEnd, AgentError> {
    let mut delivery = Delivery {
        cap: output_cap,
        delivered: 0,
        truncated: false,
        on_output,
    };
    let payload = stream_until(link, request, Kind::CodeEnd, &mut delivery, net)?;
    let (end, tail) = CodeEnd::decode(&payload)?;
    if let Some(out) = tail {
        delivery.take(out);
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(RunEnd {
        end: ExecEnd::of(end.status, delivery.truncated),
        result: end.result.map(text),
        error: end.error.map(|e| CodeFailure {
            name: text(e.name),
            value: text(e.value),
            traceback: text(e.traceback),
        }),
    })
}

/// Asks the guest for its persistent contexts.
pub fn list_contexts(link: &mut dyn FrameLink) -> Result<Vec<ContextInfo>, AgentError> {
    let request = super::request::encode(Kind::ListContexts, 0, |_| Ok(()))?;
    let mut payload = Vec::new();
    let header = link.round_trip(&request, &mut payload)?;
    match header.kind {
        Kind::Contexts => Ok(ContextList::decode(&payload)?
            .iter()
            .map(|c| ContextInfo {
                name: String::from_utf8_lossy(c.name).into_owned(),
                language: c.language,
            })
            .collect()),
        Kind::Error => Err(agent_error(&payload)),
        other => Err(AgentError::Protocol(format!(
            "expected Contexts, got {other:?}"
        ))),
    }
}
