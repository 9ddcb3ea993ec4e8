//! Networking for sandboxes that ask for it: each sandbox gets its own
//! host-side endpoint, a user-space TCP/IP stack that terminates the guest's
//! flows and opens ordinary host sockets after a policy check (the approach of
//! slirp and passt). Identical guest addresses in forks of one snapshot never
//! meet, because no two sandboxes share an endpoint.
//!
//! The guest's side of the link is the same in every sandbox: address
//! [`GUEST_IP`]/24 with MAC [`GUEST_MAC`], the gateway and DNS server at
//! [`GATEWAY_IP`]. The subnet is TEST-NET-1 (RFC 5737), which no real host
//! uses, so it never hides a destination a policy might allow.

mod dns;
mod endpoint;
mod frames;
mod limits;
mod packet;
pub mod policy;
mod port;
mod reactor;
mod tcp;
mod udp;

pub use endpoint::{Endpoint, EndpointConfig, GuestLink, NetStats};
pub use limits::{Limits, MAX_CONNECTIONS, MIN_BYTES_PER_SEC};
pub use policy::{Policy, PolicyError};
pub use reactor::Network;

use std::net::Ipv4Addr;

use smoltcp::wire::EthernetAddress;

/// The guest's address.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The host side's address: the guest's gateway and DNS server.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Prefix length of the guest's subnet.
pub const PREFIX_LEN: u8 = 24;
/// The guest's MAC (locally administered).
pub const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0x5a, 0x42, 0x00, 0x00, 0x02]);
/// The host side's MAC.
pub const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x02, 0x5a, 0x42, 0x00, 0x00, 0x01]);

#[cfg(test)]
mod tests;
