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

mod channel;
mod commands;
mod cell;
mod output;
mod rng;
mod rt;
mod text;

use zeroboot_proto::{AgentErrorCode, AgentKind, Exec, Kind, Ready, VERSION};

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
    match request {
        Ok((Kind::Exec, payload)) => match Exec::decode(payload) {
            Ok(exec) => {
                let mut out = Output::new(chan);
                let code = commands::run(&exec, &mut out);
                out.finish(code);
            }
            Err(_) => chan.send_error(AgentErrorCode::BadRequest, b"bad exec payload"),
        },
        Ok(_) => chan.send_error(AgentErrorCode::Unsupported, b"the bare guest only runs exec"),
        Err(_) => chan.send_error(AgentErrorCode::BadRequest, b"bad frame"),
    }
}
