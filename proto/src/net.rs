//! Payloads of the network requests: how the host tells the agent to bring
//! up the guest's interface.

use crate::{Reader, StrList, WireError, Writer};

/// `NetFrames` flag: the host has flows open, so the guest should ask
/// again soon even if it has nothing to send (frames may arrive for it).
pub const NET_ACTIVE: u32 = 1;

/// Parses a frame list (a `u32` count, then each frame as a `u32` length
/// and its bytes): the payload of [`crate::Kind::NetFrames`] and
/// [`crate::Kind::GuestFrames`]. Encode one with [`StrList::encode`].
pub fn decode_frame_list(payload: &[u8]) -> Result<StrList<'_>, WireError> {
    let mut r = Reader::new(payload);
    let list = StrList::decode(&mut r, 1)?;
    r.finish()?;
    Ok(list)
}

/// Kernel modules the [`NetLink::VirtioMmio`] link needs. The image packs
/// them with what they depend on, and the agent loads each after its
/// dependencies (read with [`module_depends`]: which modules a module needs
/// changes between kernel builds).
pub const VIRTIO_NET_MODULES: &[&str] = &["virtio_mmio", "virtio_net"];
/// Kernel modules the [`NetLink::TapMailbox`] link needs.
pub const TAP_NET_MODULES: &[&str] = &["tun"];
/// Where the image puts those modules and their dependencies (`NAME.ko`).
pub const NET_MODULE_DIR: &str = "/lib/modules/zeroboot";

/// The modules a kernel module needs loaded first: the comma-separated
/// `depends=` entry of its `.modinfo` section (empty when it has none).
pub fn module_depends(ko: &[u8]) -> impl Iterator<Item = &[u8]> {
    const KEY: &[u8] = b"\0depends=";
    let value = ko
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|at| {
            let rest = &ko[at + KEY.len()..];
            &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
        })
        .unwrap_or(&[]);
    value.split(|&b| b == b',').filter(|d| !d.is_empty())
}

/// How the guest's interface reaches the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum NetLink {
    /// A virtio-net device on virtio-mmio, described in the ACPI tables.
    VirtioMmio = 1,
    /// A TAP device whose frames the agent carries in the mailbox.
    TapMailbox = 2,
}

/// Payload of [`crate::Kind::NetUp`]: the interface's settings. The agent
/// answers [`crate::Kind::Done`] once the interface is up with its address,
/// default route and resolver set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetUp {
    /// The link.
    pub link: NetLink,
    /// The interface's MAC.
    pub mac: [u8; 6],
    /// The guest's IPv4 address.
    pub addr: [u8; 4],
    /// Its prefix length.
    pub prefix_len: u32,
    /// The default gateway.
    pub gateway: [u8; 4],
    /// The DNS server.
    pub dns: [u8; 4],
    /// Largest IP packet on the link.
    pub mtu: u32,
}

impl NetUp {
    /// Appends the payload.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.link as u32)?;
        w.raw(&self.mac)?;
        w.raw(&self.addr)?;
        w.u32(self.prefix_len)?;
        w.raw(&self.gateway)?;
        w.raw(&self.dns)?;
        w.u32(self.mtu)
    }

    /// Parses the payload.
    pub fn decode(payload: &[u8]) -> Result<NetUp, WireError> {
        let mut r = Reader::new(payload);
        let link = match r.u32()? {
            1 => NetLink::VirtioMmio,
            2 => NetLink::TapMailbox,
            _ => return Err(WireError::BadValue),
        };
        let array = |r: &mut Reader<'_>| r.take(4).map(|b| [b[0], b[1], b[2], b[3]]);
        let mac = r.take(6)?.try_into().map_err(|_| WireError::Truncated)?;
        let addr = array(&mut r)?;
        let prefix_len = r.u32()?;
        let gateway = array(&mut r)?;
        let dns = array(&mut r)?;
        let mtu = r.u32()?;
        r.finish()?;
        if prefix_len > 32 || !(68..=65535).contains(&mtu) {
            return Err(WireError::BadValue);
        }
        Ok(NetUp {
            link,
            mac,
            addr,
            prefix_len,
            gateway,
            dns,
            mtu,
        })
    }
}
