//! Sandboxes with network. A fork that asks for it gets an endpoint of its
//! own ([`crate::net`]): a user-space TCP/IP stack on the host that applies
//! the fork's policy and caps, so forks of one snapshot, whose guests all
//! have the same address and MAC, never share a flow.
//!
//! The guest's side costs nothing until it is used: a template has no
//! network interface, and the fork's interface is brought up by a `NetUp`
//! request that rides in front of the sandbox's first request (the fork
//! itself stays as fast as one without network). A fork of a snapshot that
//! had connections open starts with an empty endpoint, so the guest's old
//! sockets see resets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::template::Template;
use super::{Engine, EngineError};
use crate::agent::{self, AgentError, FramePort, NetLink, NetUp, VmLink};
use crate::net::{self, Endpoint, EndpointConfig, GuestLink, Limits, NetStats, Network, Policy};
use crate::vmm::{NetBackend, NetHandle, VcpuThread, Vm};

/// How the guest's interface reaches its endpoint by default. Both links
/// are built while they are measured against each other
/// (docs/networking.md); [`NetworkSpec::link`] picks one.
const DEFAULT_LINK: NetLink = NetLink::VirtioMmio;
/// The link's MTU.
const MTU: usize = 1500;
/// What a sandbox's network may reach, in the caller's words (checked when
/// a fork asks for it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Allowed destinations: `host[:port]`, `*.domain[:port]`, `*[:port]`,
    /// `CIDR[:port]`.
    pub allow: Vec<String>,
    /// Denied destinations, same forms; deny wins.
    pub deny: Vec<String>,
    /// Connections open at once (default [`Limits::DEFAULT`]).
    pub max_connections: Option<usize>,
    /// Bandwidth cap each way, bytes per second (default [`Limits::DEFAULT`]).
    pub max_bytes_per_sec: Option<u64>,
    /// The link to the guest (default virtio-net), while both are measured.
    pub link: Option<NetLink>,
}

impl NetworkSpec {
    fn config(&self, label: &str) -> Result<EndpointConfig, EngineError> {
        let policy = Policy::parse(&self.allow, &self.deny)?;
        let limits = Limits::new(self.max_connections, self.max_bytes_per_sec)
            .map_err(|(field, e)| EngineError::InvalidRequest(format!("network.{field} {e}")))?;
        Ok(EndpointConfig {
            policy,
            limits,
            mtu: MTU,
            label: label.to_string(),
        })
    }
}

/// A fork's network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ForkNetwork {
    /// What the template's spec says (`network`; none if it says nothing).
    #[default]
    Template,
    /// No network device at all.
    Off,
    /// This policy.
    On(NetworkSpec),
}

impl ForkNetwork {
    /// The network a fork gets, given its template's default.
    pub(crate) fn resolve<'a>(
        &'a self,
        template: Option<&'a NetworkSpec>,
    ) -> Option<&'a NetworkSpec> {
        match self {
            ForkNetwork::Template => template,
            ForkNetwork::Off => None,
            ForkNetwork::On(spec) => Some(spec),
        }
    }
}

impl From<&crate::spec::SpecNetwork> for NetworkSpec {
    fn from(n: &crate::spec::SpecNetwork) -> NetworkSpec {
        NetworkSpec {
            allow: n.allow.clone(),
            deny: n.deny.clone(),
            max_connections: n.max_connections,
            max_bytes_per_sec: n.max_bytes_per_sec,
            link: None,
        }
    }
}

/// The network a template's forks get by default: its spec's `network`,
/// read from the manifest it was built with (or loaded from a file with).
/// A file is input: a `network` of the wrong shape gives no network (and a
/// warning), a policy entry that does not parse is refused at each fork.
pub(crate) fn template_default(
    manifest: Option<&crate::image::spec_image::Manifest>,
) -> Option<NetworkSpec> {
    let value = manifest?.spec.get("network")?;
    match serde_json::from_value::<crate::spec::SpecNetworkField>(value.clone()) {
        Ok(field) => field.0.as_ref().map(NetworkSpec::from),
        Err(e) => {
            tracing::warn!(error = %e, "the template's spec has an unreadable network: its forks get none");
            None
        }
    }
}

/// A sandbox's network.
pub(crate) struct SandboxNet {
    /// Its endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Whether the guest's interface is up.
    up: Arc<AtomicBool>,
    /// How it reaches the endpoint.
    link: NetLink,
}

impl SandboxNet {
    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.endpoint.stats()
    }

    /// The endpoint as the agent's conversation sees it (TAP link only).
    pub fn port(&self) -> Option<Arc<Endpoint>> {
        (self.link == NetLink::TapMailbox).then(|| Arc::clone(&self.endpoint))
    }

    /// Plugs the sandbox's VM into its endpoint (virtio link): queued on the
    /// VM's thread, ahead of any request.
    pub fn plug(&self, thread: &VcpuThread) {
        if self.link != NetLink::VirtioMmio {
            return;
        }
        let endpoint = Arc::clone(&self.endpoint);
        thread.submit(move |vm| {
            let handle = vm.attach_net(
                Arc::clone(&endpoint) as Arc<dyn NetBackend>,
                net::GUEST_MAC.0,
                MTU as u16,
            );
            endpoint.set_link(Some(Arc::new(DeviceLink(handle))));
        });
    }

    /// Brings the guest's interface up if it is not yet: on the VM's thread,
    /// ahead of the sandbox's request.
    pub fn ensure_up(&self, vm: &mut Vm, tpl: &Template) -> Result<(), AgentError> {
        if self.up.load(Ordering::SeqCst) {
            return Ok(());
        }
        agent::net_up(
            &mut VmLink {
                vm,
                mailbox: &tpl.layer.mailbox,
            },
            &net_up_request(self.link),
        )?;
        self.up.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Wakes the VM's network device when frames arrive for its guest.
struct DeviceLink(NetHandle);

impl GuestLink for DeviceLink {
    fn frames_ready(&self) {
        self.0.deliver();
    }
}

impl NetBackend for Endpoint {
    fn transmitted(&self, frames: &mut dyn Iterator<Item = &[u8]>) {
        self.guest_frames(frames);
    }

    fn receive(&self, put: &mut dyn FnMut(&[u8]) -> bool) {
        self.take_frames(put);
    }
}

impl FramePort for Endpoint {
    fn transmitted(&self, frames: &mut dyn Iterator<Item = &[u8]>) {
        self.guest_frames(frames);
    }

    fn receive(&self, put: &mut dyn FnMut(&[u8]) -> bool) {
        self.take_frames(put);
    }

    fn active(&self) -> bool {
        self.is_busy()
    }
}

/// The guest's interface settings: the same in every sandbox.
fn net_up_request(link: NetLink) -> NetUp {
    NetUp {
        link,
        mac: net::GUEST_MAC.0,
        addr: net::GUEST_IP.octets(),
        prefix_len: u32::from(net::PREFIX_LEN),
        gateway: net::GATEWAY_IP.octets(),
        dns: net::GATEWAY_IP.octets(),
        mtu: MTU as u32,
    }
}

/// The engine's network threads, started by the first fork that needs them.
#[derive(Default)]
pub(crate) struct Networking(OnceLock<Result<Network, String>>);

impl Engine {
    /// A new sandbox's network, as `spec` says.
    pub(crate) fn sandbox_net(
        &self,
        spec: &NetworkSpec,
        label: &str,
    ) -> Result<SandboxNet, EngineError> {
        let config = spec.config(label)?;
        let network = self
            .0
            .networking
            .0
            .get_or_init(|| Network::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| {
                EngineError::ResourceLimit(format!("cannot start the network threads: {e}"))
            })?;
        Ok(SandboxNet {
            endpoint: network.endpoint(config),
            up: Arc::new(AtomicBool::new(false)),
            link: spec.link.unwrap_or(DEFAULT_LINK),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::spec_image::Manifest;

    fn manifest(spec: serde_json::Value) -> Manifest {
        Manifest {
            base: "python".into(),
            python: Vec::new(),
            debian: Vec::new(),
            preload: Vec::new(),
            initramfs_bytes: 0,
            spec,
        }
    }

    #[test]
    fn a_fork_gets_its_own_network_else_its_templates() {
        let spec = crate::spec::Spec::from_toml(
            "[network]\nallow = [\"pypi.org:443\"]\nmax_connections = 8",
            std::path::Path::new("/"),
        )
        .unwrap();
        let default = template_default(Some(&manifest(spec.to_json()))).unwrap();
        assert_eq!(default.allow, ["pypi.org:443"]);
        assert_eq!(default.max_connections, Some(8));
        let own = NetworkSpec {
            allow: vec!["10.0.0.0/8".into()],
            ..Default::default()
        };
        assert_eq!(
            ForkNetwork::Template.resolve(Some(&default)),
            Some(&default)
        );
        assert_eq!(ForkNetwork::Off.resolve(Some(&default)), None);
        assert_eq!(
            ForkNetwork::On(own.clone()).resolve(Some(&default)),
            Some(&own)
        );
        assert_eq!(ForkNetwork::Template.resolve(None), None);
        // No spec, a spec without network, `network = false`: none.
        assert_eq!(template_default(None), None);
        let plain = manifest(crate::spec::Spec::default().to_json());
        assert_eq!(template_default(Some(&plain)), None);
        assert_eq!(
            template_default(Some(&manifest(serde_json::json!({"network": false})))),
            None
        );
    }
}
