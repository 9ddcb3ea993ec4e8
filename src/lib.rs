//! zeroboot: KVM sandboxes forked copy-on-write from a memory snapshot, driven
//! as a stdio JSON-RPC worker.
//!
//! Layers, top to bottom: [`rpc`] translates JSON-RPC to [`engine`] calls and
//! [`mcp`] translates MCP tool calls to them (two front ends, side by side); the
//! engine owns templates and sandboxes; [`vmm`] owns KVM; [`agent`] is the host
//! side of the protocol spoken with the program inside each guest.

pub mod affinity;
pub mod agent;
pub mod confine;
pub mod engine;
pub mod image;
pub mod mcp;
pub mod net;
pub mod rpc;
pub mod spec;
mod stdio;
pub mod vmm;

/// An error and its causes as one line ("a: b: c"), printed once at the edge.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}
