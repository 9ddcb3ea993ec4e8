//! zeroboot: KVM sandboxes forked copy-on-write from a memory snapshot, driven
//! as a stdio JSON-RPC worker.
//!
//! Layers, top to bottom: [`rpc`] translates JSON-RPC to [`engine`] calls; the
//! engine owns templates and sandboxes; [`vmm`] owns KVM; [`agent`] is the host
//! side of the protocol spoken with the program inside each guest.

pub mod agent;
pub mod engine;
pub mod image;
pub mod rpc;
pub mod vmm;
