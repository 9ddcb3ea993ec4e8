//! The host's half of a conversation, run on the vCPU's thread: write a
//! request, run until the doorbell, interpret the guest's frame, repeat until a
//! final frame arrives.

use zeroboot_proto::{
    AgentError as WireAgentError, EXIT_TIMED_OUT, ExitStatus, Kind, Output, RESUME_STOP_OUTPUT,
    Ready, Stream, VERSION, encode_frame,
};

use zeroboot_proto::Header;

use super::network::{FramePort, Unplugged, answer_frames};
use super::{AgentError, Mailbox};
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

/// Sends an Exec frame and runs the guest to its Exit, passing output chunks
/// to `on_output` until `output_cap` bytes in all have been passed. The
/// guest's network frames, if it has a TAP link, go through `net`.
pub fn exec(
    vm: &mut Vm,
    mailbox: &Mailbox,
    request: &[u8],
    output_cap: usize,
    on_output: &mut dyn FnMut(Stream, &[u8]),
    net: Option<&dyn FramePort>,
) -> Result<ExecEnd, AgentError> {
    let mut payload = Vec::new();
    let mut delivered = 0usize;
    let mut truncated = false;
    let mut next = request.to_vec();
    loop {
        let header = round_trip(vm, mailbox, &next, &mut payload)?;
        match header.kind {
            Kind::Output => {
                let out = Output::decode(&payload)?;
                truncated |= deliver(out, output_cap, &mut delivered, on_output);
                let flags = if truncated { RESUME_STOP_OUTPUT } else { 0 };
                next.resize(zeroboot_proto::HEADER_LEN, 0);
                encode_frame(&mut next, Kind::Resume, flags, |_| Ok(()))?;
            }
            Kind::Exit => {
                let (status, tail) = ExitStatus::decode(&payload)?;
                if let Some(out) = tail {
                    truncated |= deliver(out, output_cap, &mut delivered, on_output);
                }
                return Ok(ExecEnd {
                    code: status.code,
                    signal: status.signal,
                    timed_out: status.flags & EXIT_TIMED_OUT != 0,
                    truncated,
                });
            }
            Kind::GuestFrames => {
                let port = net.unwrap_or(&Unplugged);
                answer_frames(port, &payload, mailbox.capacity(), &mut next)?;
            }
            Kind::Error => return Err(agent_error(&payload)),
            other => {
                return Err(AgentError::Protocol(format!(
                    "unexpected {other:?} frame during exec"
                )));
            }
        }
    }
}
