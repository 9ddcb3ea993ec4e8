//! The host's side of a guest's network: bringing the interface up (one
//! [`NetUp`] request, answered by `Done`), and, for the TAP link, carrying
//! the guest's frames during an exec: the agent sends what its TAP device
//! sent as [`Kind::GuestFrames`], the host answers with the frames waiting
//! for the guest as [`Kind::NetFrames`] — one VM exit per batch.

use zeroboot_proto::{HEADER_LEN, Header, Kind, NET_ACTIVE, NetUp, decode_frame_list};

use super::AgentError;
use super::request::encode;
use super::transfer::{FrameLink, request};

/// Asks the agent to bring the interface up as `up` says.
pub fn net_up(link: &mut dyn FrameLink, up: &NetUp) -> Result<(), AgentError> {
    let frame = encode(Kind::NetUp, 0, |w| up.encode(w))?;
    request(link, &frame, Kind::Done, &mut Vec::new()).map(drop)
}

/// Where a guest's frames go and come from: its network endpoint.
pub trait FramePort: Send + Sync {
    /// Takes the frames the guest sent.
    fn transmitted(&self, frames: &mut dyn Iterator<Item = &[u8]>);
    /// Hands waiting frames to `put` until it refuses one.
    fn receive(&self, put: &mut dyn FnMut(&[u8]) -> bool);
    /// Whether frames may come for the guest without it sending any
    /// (connections open, lookups pending).
    fn active(&self) -> bool;
}

/// The port of a sandbox without network whose guest has an interface (a
/// fork, without network, of a snapshot taken with it): frames go nowhere.
pub(super) struct Unplugged;

impl FramePort for Unplugged {
    fn transmitted(&self, _: &mut dyn Iterator<Item = &[u8]>) {}

    fn receive(&self, _: &mut dyn FnMut(&[u8]) -> bool) {}

    fn active(&self) -> bool {
        false
    }
}

/// Answers a [`Kind::GuestFrames`] payload: its frames go to `port`, and the
/// reply (frames for the guest, at most `capacity` bytes with the header)
/// is written into `next`.
pub(super) fn answer_frames(
    port: &dyn FramePort,
    payload: &[u8],
    capacity: usize,
    next: &mut Vec<u8>,
) -> Result<(), AgentError> {
    let list = decode_frame_list(payload)?;
    port.transmitted(&mut list.iter());
    next.clear();
    next.resize(capacity, 0);
    let mut at = HEADER_LEN + 4;
    let mut count = 0u32;
    port.receive(&mut |frame| {
        let end = at + 4 + frame.len();
        if end > capacity {
            return false;
        }
        next[at..at + 4].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        next[at + 4..end].copy_from_slice(frame);
        at = end;
        count += 1;
        true
    });
    next[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&count.to_le_bytes());
    let header = Header {
        kind: Kind::NetFrames,
        len: (at - HEADER_LEN) as u32,
        flags: if port.active() { NET_ACTIVE } else { 0 },
    };
    next[..HEADER_LEN].copy_from_slice(&header.encode());
    next.truncate(at);
    Ok(())
}
