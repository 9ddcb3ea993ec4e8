//! The output pump: feeds stdin, streams stdout/stderr to the host as they
//! come (one Output frame per read, each acknowledged by a Resume), enforces
//! the deadline (the program decides how: see [`Running::interrupt`]), and
//! returns how the program ended, for the caller's final frame.
//!
//! A run ends when the program says so ([`Running::try_status`]): for a
//! process, when it has exited; what it wrote before is drained from the
//! pipes, but a background process it left holding the pipes does not keep
//! the run open. The last chunk drained is handed back to ride in the final
//! frame (saving one round trip, i.e. one VM exit in zeroboot's VMM, per
//! short exec).
//!
//! With a TAP link, the pump also carries the guest's network frames: what
//! the TAP device sent goes to the host in one GuestFrames frame, and the
//! host's answer brings the frames waiting for the guest. While the host
//! says it has flows open, the pump asks again every [`NET_POLL`] even when
//! the guest sends nothing, since that is the only way frames can reach it.

use super::{Running, Stdio};
use crate::frames::{self, Failure, OUTPUT_DATA};
use crate::net::Tap;
use crate::sys;
use crate::transport::{Transport, TransportError};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use zeroboot_proto::{
    AgentErrorCode, EXIT_TIMED_OUT, ExitStatus, HEADER_LEN, Header, Kind, MAX_PAYLOAD, NET_ACTIVE,
    RESUME_STOP_OUTPUT, Stream, decode_frame_list,
};

/// How a run ended.
#[derive(Debug)]
pub struct Finish {
    /// Its status in wire form (the timeout flag set if the deadline struck).
    pub status: ExitStatus,
    /// The last output chunk, held back for the final frame (none if there
    /// was none or the host wanted no more output).
    pub tail: Option<(Stream, Vec<u8>)>,
}

/// How often the pump asks the host for frames while it has flows open.
const NET_POLL: Duration = Duration::from_millis(1);

/// The largest chunk read at once: small enough to ride in an Exit frame.
const CHUNK: usize = MAX_PAYLOAD - ExitStatus::OUTPUT_TAIL_OFFSET;
/// Reads per stream once the program has exited: a pipe holds at most 1 MiB,
/// so this drains everything it wrote.
const DRAIN_READS: usize = (1 << 20) / CHUNK + 1;

/// The pipes and where their bytes go.
struct Pump<'t, 's> {
    t: &'t mut dyn Transport,
    /// The output pipes, `None` once one has ended.
    outs: [(Stream, Option<&'s File>); 2],
    stdin: &'s mut Option<File>,
    input: &'s [u8],
    written: usize,
    /// The host asked for no more output (or broke the protocol).
    discard: bool,
    /// Set when the host answered an Output with something other than Resume.
    protocol_error: Option<String>,
}

impl Pump<'_, '_> {
    /// Reads what stream `i` has now straight into the frame buffer, where
    /// an Output frame's data goes (no buffer of the agent's own: every page
    /// a request writes is a page its fork copies); 0 when it has nothing now
    /// or has ended (then it is closed).
    fn read_chunk(&mut self, i: usize) -> usize {
        let Some(mut file) = self.outs[i].1 else {
            return 0;
        };
        match file.read(&mut self.t.buf()[OUTPUT_DATA..OUTPUT_DATA + CHUNK]) {
            Ok(n) if n > 0 => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            // End of file, or a broken pipe: either way nothing more comes.
            _ => {
                self.outs[i].1 = None;
                0
            }
        }
    }

    /// Sends the `n` bytes read in place as an Output frame (unless
    /// discarding) and handles the host's answer.
    fn send(&mut self, stream: Stream, n: usize, pgid: u32) -> Result<(), TransportError> {
        if self.discard {
            return Ok(());
        }
        match exchange_output(self.t, stream, n)? {
            Err(failure) => {
                self.protocol_error = Some(failure.message);
                self.discard = true;
                report_kill(pgid);
            }
            Ok(flags) => self.discard = flags & RESUME_STOP_OUTPUT != 0,
        }
        Ok(())
    }

    /// Reads and sends one chunk of stream `i`, if it has one.
    fn forward(&mut self, i: usize, pgid: u32) -> Result<(), TransportError> {
        let n = self.read_chunk(i);
        if n == 0 {
            return Ok(());
        }
        self.send(self.outs[i].0, n, pgid)
    }

    /// After the exit: sends what is left in the pipes, keeping the very last
    /// chunk back for the Exit frame (`None` if there is none or the host
    /// wants no more output).
    fn drain(&mut self, pgid: u32) -> Result<Option<(Stream, Vec<u8>)>, TransportError> {
        let mut last: Option<(Stream, Vec<u8>)> = None;
        for i in 0..2 {
            for _ in 0..DRAIN_READS {
                let n = self.read_chunk(i);
                if n == 0 {
                    break;
                }
                let fresh = (
                    self.outs[i].0,
                    self.t.buf()[OUTPUT_DATA..OUTPUT_DATA + n].to_vec(),
                );
                if let Some((stream, data)) = last.replace(fresh) {
                    self.t.buf()[OUTPUT_DATA..OUTPUT_DATA + data.len()].copy_from_slice(&data);
                    self.send(stream, data.len(), pgid)?;
                }
            }
        }
        Ok(last.filter(|_| !self.discard))
    }

    /// Writes as much pending stdin as the pipe takes; closes it when done.
    fn feed(&mut self) {
        let Some(pipe) = self.stdin.as_mut() else {
            return;
        };
        match pipe.write(&self.input[self.written..]) {
            Ok(n) => self.written += n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            // EPIPE: the program closed its stdin; the rest is dropped.
            Err(_) => self.written = self.input.len(),
        }
        if self.written == self.input.len() {
            *self.stdin = None;
        }
    }
}

impl Pump<'_, '_> {
    /// Sends what the TAP device has (possibly nothing) and writes what the
    /// host answers into it; returns whether the host has flows open.
    fn carry_frames(&mut self, tap: &Tap, pgid: u32) -> Result<bool, TransportError> {
        let buf = self.t.buf();
        let mut at = HEADER_LEN + 4;
        let mut count = 0u32;
        while buf.len() - at >= 4 + tap.frame_max {
            match (&tap.dev).read(&mut buf[at + 4..at + 4 + tap.frame_max]) {
                Ok(n) => {
                    buf[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
                    at += 4 + n;
                    count += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: the device has nothing more for now.
                Err(_) => break,
            }
        }
        buf[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&count.to_le_bytes());
        let header = Header {
            kind: Kind::GuestFrames,
            len: (at - HEADER_LEN) as u32,
            flags: 0,
        };
        buf[..HEADER_LEN].copy_from_slice(&header.encode());
        let reply = self.t.exchange(at)?;
        let payload = &self.t.buf()[HEADER_LEN..HEADER_LEN + reply.len as usize];
        match (reply.kind, decode_frame_list(payload)) {
            (Kind::NetFrames, Ok(frames)) => {
                for frame in frames.iter() {
                    // A TAP queue that is full drops the frame, as a wire would.
                    let _ = (&tap.dev).write(frame);
                }
                Ok(reply.flags & NET_ACTIVE != 0)
            }
            (kind, _) => {
                self.protocol_error = Some(format!("expected NetFrames, got {kind:?}"));
                self.discard = true;
                report_kill(pgid);
                Ok(false)
            }
        }
    }
}

/// Kills a process group, logging (not failing) if that is impossible.
fn report_kill(pgid: u32) {
    if let Err(e) = sys::kill_group(pgid) {
        eprintln!("zeroboot-agent: cannot kill process group {pgid}: {e}");
    }
}

/// Milliseconds until `deadline`, rounded up, for `poll`.
fn ms_until(deadline: Instant) -> i32 {
    let left = deadline.saturating_duration_since(Instant::now());
    (left.as_micros().div_ceil(1000))
        .try_into()
        .unwrap_or(i32::MAX)
}

/// The wire form of an exit status. A signal death also reports the shell's
/// `128 + signal` as its code.
fn wire_status(s: std::process::ExitStatus, timed_out: bool) -> ExitStatus {
    let signal = s.signal().unwrap_or(0);
    ExitStatus {
        code: s.code().unwrap_or(128 + signal),
        signal,
        flags: if timed_out { EXIT_TIMED_OUT } else { 0 },
    }
}

/// Runs the started program to its end, feeding it `input` (then closing its
/// stdin) and streaming its output. `Ok(Err(_))`: the run failed in the
/// agent (the program was lost, or the host broke the protocol).
pub fn pump(
    t: &mut dyn Transport,
    program: &mut dyn Running,
    stdio: &mut Stdio,
    input: &[u8],
    timeout: Option<Duration>,
    tap: Option<&Tap>,
) -> Result<Result<Finish, Failure>, TransportError> {
    if input.is_empty() {
        stdio.stdin = None;
    }
    let Stdio {
        stdin,
        stdout,
        stderr,
    } = stdio;
    for f in [&*stdout, &*stderr].into_iter().chain(stdin.as_ref()) {
        sys::set_nonblocking(f.as_fd()).map_err(TransportError::Io)?;
    }
    let mut p = Pump {
        t,
        outs: [
            (Stream::Stdout, Some(stdout)),
            (Stream::Stderr, Some(stderr)),
        ],
        stdin,
        input,
        written: 0,
        discard: false,
        protocol_error: None,
    };
    let pgid = program.pgid();
    // The deadline, then (if the program asked for a grace) the moment it is
    // killed anyway.
    let mut deadline = timeout.map(|d| Instant::now() + d);
    let mut timed_out = false;
    // When to ask the host for frames next, while it has flows open.
    let mut net_due: Option<Instant> = None;
    let status = loop {
        if let Some(d) = deadline
            && Instant::now() >= d
        {
            deadline = if timed_out {
                report_kill(pgid);
                None
            } else {
                timed_out = true;
                program.interrupt().map(|grace| Instant::now() + grace)
            };
        }
        let wait_ms = deadline.map_or(-1, ms_until);
        let wait_ms = match net_due {
            Some(due) if wait_ms < 0 || ms_until(due) < wait_ms => ms_until(due),
            _ => wait_ms,
        };
        let mut fds = Vec::with_capacity(6);
        for fd in program.exit_fds() {
            fds.push(libc::pollfd {
                fd: fd.map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let first_out = fds.len();
        for (_, f) in &p.outs {
            fds.push(libc::pollfd {
                fd: f.map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        fds.push(libc::pollfd {
            fd: p.stdin.as_ref().map_or(-1, |f| f.as_raw_fd()),
            events: libc::POLLOUT,
            revents: 0,
        });
        fds.push(libc::pollfd {
            fd: tap.map_or(-1, |t| t.dev.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        });
        sys::poll(&mut fds, wait_ms).map_err(TransportError::Io)?;
        if let Some(tap) = tap
            && (fds[first_out + 3].revents != 0 || net_due.is_some_and(|d| Instant::now() >= d))
        {
            net_due = p
                .carry_frames(tap, pgid)?
                .then(|| Instant::now() + NET_POLL);
        }
        // The end first: output that is already there then goes to the
        // drain, whose last chunk rides in the final frame.
        if fds[..first_out].iter().any(|f| f.revents != 0) {
            match program.try_status() {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(e) => {
                    report_kill(pgid);
                    let msg = format!("lost track of the program: {e}");
                    return Ok(Err(Failure::new(AgentErrorCode::Io, msg)));
                }
            }
        }
        for i in 0..2 {
            if fds[first_out + i].revents != 0 {
                p.forward(i, pgid)?;
            }
        }
        if fds[first_out + 2].revents != 0 {
            p.feed();
        }
    };
    let tail = p.drain(pgid)?;
    if let Some(msg) = p.protocol_error {
        return Ok(Err(Failure::new(AgentErrorCode::BadRequest, msg)));
    }
    Ok(Ok(Finish {
        status: wire_status(status, timed_out),
        tail,
    }))
}

/// Sends `data` (at most one chunk) as an Output frame; returns the flags of
/// the host's answer, which must be a Resume.
pub fn send_output(
    t: &mut dyn Transport,
    stream: Stream,
    data: &[u8],
) -> Result<Result<u32, Failure>, TransportError> {
    t.buf()[OUTPUT_DATA..OUTPUT_DATA + data.len()].copy_from_slice(data);
    exchange_output(t, stream, data.len())
}

/// Sends the `n` bytes at [`OUTPUT_DATA`] as an Output frame; returns the
/// flags of the host's answer, which must be a Resume.
fn exchange_output(
    t: &mut dyn Transport,
    stream: Stream,
    n: usize,
) -> Result<Result<u32, Failure>, TransportError> {
    let len = frames::output_in_place(t.buf(), stream, n);
    let reply = t.exchange(len)?;
    Ok(match reply.kind {
        Kind::Resume => Ok(reply.flags),
        other => Err(Failure::new(
            AgentErrorCode::BadRequest,
            format!("expected Resume after Output, got {other:?}"),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_code_signal_and_timeout_flag() {
        let exited = std::process::ExitStatus::from_raw(3 << 8);
        assert_eq!(
            wire_status(exited, false),
            ExitStatus {
                code: 3,
                signal: 0,
                flags: 0
            }
        );
        let killed = std::process::ExitStatus::from_raw(libc::SIGKILL);
        assert_eq!(
            wire_status(killed, true),
            ExitStatus {
                code: 137,
                signal: 9,
                flags: EXIT_TIMED_OUT
            }
        );
    }

    #[test]
    fn deadline_rounds_up_to_whole_milliseconds() {
        let soon = Instant::now() + std::time::Duration::from_micros(1500);
        assert!((1..=2).contains(&ms_until(soon)));
        assert_eq!(ms_until(Instant::now()), 0);
    }
}
