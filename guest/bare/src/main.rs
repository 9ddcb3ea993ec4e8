//! The bare guest: a freestanding 64-bit program that speaks the agent protocol
//! with no OS underneath, so every host-side path (fork, copy-on-write isolation,
//! exec, timeouts, crashes, hostile frames) is tested on any KVM, kvm-pvm included.
//!
//! The host enters it at CPL3 with paging on (1 GiB identity map) and interrupts
//! off. Under kvm-pvm CPL3 code runs natively while CPL0 code is emulated at
//! ~200 ns per instruction, so user mode is the fast choice even though each exit
//! costs more there (~57 us vs ~17 us): one exit per message keeps exits rare.
#![no_std]
#![no_main]

mod cell;
mod channel;
mod code;
mod commands;
mod files;
mod output;
mod rng;
mod rt;
mod text;

use zeroboot_proto::{
    AgentErrorCode, AgentKind, Exec, Kind, ReadFile, Ready, RunCode, VERSION, WriteFile,
};

use crate::channel::Channel;
use crate::output::Output;

core::arch::global_asm!(
    ".section .text.entry,\"ax\"",
    ".global _start",
    "_start:",
    "lea rsp, [rip + {stack} + {size}]",
    "call {main}",
    "ud2",
    stack = sym rt::STACK,
    size = const rt::STACK_SIZE,
    main = sym guest_main,
);

/// Registers the mailbox, announces readiness and serves requests forever.
extern "C" fn guest_main() -> ! {
    let chan = Channel::open();
    chan.send(Kind::Ready, |w| {
        Ready {
            version: VERSION,
            agent: AgentKind::Bare,
        }
        .encode(w)
    });
    loop {
        serve(&chan);
    }
}

/// Handles the request now in the mailbox; ends by sending exactly one final frame.
fn serve(chan: &Channel) {
    let request = chan.take_request();
    if !matches!(request, Ok((h, _)) if h.kind == Kind::WriteFile) {
        files::abandon();
    }
    let (header, payload) = match request {
        Ok(r) => r,
        Err(_) => return chan.send_error(AgentErrorCode::BadRequest, b"bad frame"),
    };
    let bad = |what: &[u8]| chan.send_error(AgentErrorCode::BadRequest, what);
    match header.kind {
        Kind::Exec => match Exec::decode(payload) {
            Ok(exec) => {
                let mut out = Output::new(chan);
                let code = commands::run(&exec, &mut out);
                out.finish(code);
            }
            Err(_) => bad(b"bad exec payload"),
        },
        Kind::RunCode => match RunCode::decode(payload) {
            Ok(req) => code::run(chan, &req),
            Err(_) => bad(b"bad run_code payload"),
        },
        Kind::ListContexts => code::list(chan),
        Kind::WriteFile => match WriteFile::decode(payload) {
            Ok(chunk) => match files::write(&chunk, header.flags) {
                Ok(()) => chan.send(Kind::Done, |_| Ok(())),
                Err((code, message)) => {
                    files::abandon();
                    chan.send_error(code, message)
                }
            },
            Err(_) => bad(b"bad write_file payload"),
        },
        Kind::ReadFile => match ReadFile::decode(payload) {
            Ok(req) => match files::read(&req) {
                Ok((flags, data)) => chan.send_flags(Kind::FileData, flags, |w| w.raw(data)),
                Err((code, message)) => chan.send_error(code, message),
            },
            Err(_) => bad(b"bad read_file payload"),
        },
        _ => chan.send_error(AgentErrorCode::Unsupported, b"not a request"),
    }
}
