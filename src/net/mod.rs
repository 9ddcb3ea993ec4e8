//! Networking for sandboxes that ask for it: each sandbox gets its own
//! host-side endpoint, a user-space TCP/IP stack that terminates the guest's
//! flows and opens ordinary host sockets after a policy check (the approach of
//! slirp and passt). Identical guest addresses in forks of one snapshot never
//! meet, because no two sandboxes share an endpoint.

pub mod dns;
pub mod policy;
