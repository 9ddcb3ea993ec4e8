//! How the agent was asked to run: from the kernel command line when it is
//! the guest's init, from its arguments when it is a test process.

use std::path::{Path, PathBuf};

/// Where frames travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportChoice {
    /// zeroboot's VMM: mailbox pages and port writes.
    Mailbox,
    /// A serial port (another VMM, e.g. QEMU).
    Serial(PathBuf),
    /// stdin/stdout (the agent as a host process in tests).
    Stdio,
}

/// The agent's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Transport to the host.
    pub transport: TransportChoice,
    /// Interpreter for the Python zygote (`None`: no Python execs).
    pub python: Option<PathBuf>,
    /// Node.js for JavaScript (`None`: none).
    pub node: Option<PathBuf>,
    /// The native module that reseeds Node's OpenSSL (`None`: none).
    pub node_addon: Option<PathBuf>,
    /// Start a warm spare worker per language before Ready (the first run of
    /// a fresh sandbox then needs no fork or start); `zeroboot.spares=0`
    /// trades that for a smaller template.
    pub spares: bool,
    /// Act as a guest's system: set the clock, require the entropy reseed, reap orphans.
    pub system: bool,
    /// The template's settings file ([`crate::template::PATH`] in a guest).
    pub template: Option<PathBuf>,
}

/// The usage line printed on bad arguments.
pub const USAGE: &str = "usage: zeroboot-agent [--transport stdio|mailbox|serial[:PATH]] \
     [--python PATH|none] [--node PATH|none] [--node-addon PATH] [--no-spares] [--system] \
     [--template PATH]";

/// Interpreter used in a guest when none is named.
const GUEST_PYTHON: &str = "/usr/bin/python3";
/// Where the guest image puts the reseed addon for Node.js.
pub const GUEST_NODE_ADDON: &str = "/usr/lib/zeroboot/reseed.node";

fn parse_transport(s: &str) -> Result<TransportChoice, String> {
    match s {
        "stdio" => Ok(TransportChoice::Stdio),
        "mailbox" => Ok(TransportChoice::Mailbox),
        "serial" => Ok(TransportChoice::Serial("/dev/ttyS0".into())),
        _ => match s.strip_prefix("serial:") {
            Some(path) if !path.is_empty() => Ok(TransportChoice::Serial(path.into())),
            _ => Err(format!("unknown transport {s:?}")),
        },
    }
}

/// A path, or `none`.
fn parse_path(s: &str) -> Option<PathBuf> {
    (s != "none").then(|| PathBuf::from(s))
}

/// Finds `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Config {
    /// Settings for the guest's init, from the kernel command line:
    /// `zeroboot.transport=` (default mailbox), `zeroboot.python=` and
    /// `zeroboot.node=` (default: `node` on `PATH`, if the image has it).
    /// Dotted keys are kernel module parameters, so the kernel neither
    /// complains about them nor hands them to init as arguments.
    pub fn from_cmdline(cmdline: &str) -> Result<Config, String> {
        let mut config = Config {
            transport: TransportChoice::Mailbox,
            python: Path::new(GUEST_PYTHON)
                .is_file()
                .then(|| GUEST_PYTHON.into()),
            node: on_path("node"),
            node_addon: Path::new(GUEST_NODE_ADDON)
                .is_file()
                .then(|| GUEST_NODE_ADDON.into()),
            spares: true,
            system: true,
            template: Some(crate::template::PATH.into()),
        };
        for word in cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix("zeroboot.transport=") {
                config.transport = parse_transport(v)?;
            } else if let Some(v) = word.strip_prefix("zeroboot.python=") {
                config.python = parse_path(v);
            } else if let Some(v) = word.strip_prefix("zeroboot.node=") {
                config.node = parse_path(v);
            } else if let Some(v) = word.strip_prefix("zeroboot.spares=") {
                config.spares = v != "0";
            }
        }
        Ok(config)
    }

    /// Settings for a test process, from its arguments (program name excluded).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Config, String> {
        let mut config = Config {
            transport: TransportChoice::Stdio,
            python: on_path("python3"),
            node: on_path("node"),
            node_addon: None,
            spares: true,
            system: false,
            template: None,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--transport" => config.transport = parse_transport(&value()?)?,
                "--python" => config.python = parse_path(&value()?),
                "--node" => config.node = parse_path(&value()?),
                "--node-addon" => config.node_addon = parse_path(&value()?),
                "--no-spares" => config.spares = false,
                "--system" => config.system = true,
                "--template" => config.template = Some(value()?.into()),
                _ => return Err(format!("unknown argument {arg:?}")),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_picks_transport_and_python() {
        let c = Config::from_cmdline(
            "console=ttyS0 quiet zeroboot.transport=serial:/dev/ttyS1 zeroboot.python=none \
             zeroboot.node=/opt/node zeroboot.spares=0",
        )
        .unwrap();
        assert!(!c.spares);
        assert_eq!(c.transport, TransportChoice::Serial("/dev/ttyS1".into()));
        assert_eq!(c.python, None);
        assert_eq!(c.node, Some("/opt/node".into()));
        assert!(c.system);
        assert_eq!(
            Config::from_cmdline("quiet").unwrap().transport,
            TransportChoice::Mailbox
        );
        assert!(Config::from_cmdline("zeroboot.transport=carrier-pigeon").is_err());
    }

    #[test]
    fn args_parse_and_reject_unknowns() {
        let args = [
            "--transport",
            "serial",
            "--python",
            "/opt/py",
            "--node",
            "none",
            "--node-addon",
            "/a.node",
            "--no-spares",
            "--system",
        ]
        .map(String::from);
        let c = Config::from_args(args).unwrap();
        assert_eq!(c.transport, TransportChoice::Serial("/dev/ttyS0".into()));
        assert_eq!(c.python, Some("/opt/py".into()));
        assert_eq!((c.node, c.node_addon), (None, Some("/a.node".into())));
        assert!(!c.spares);
        assert!(c.system);
        assert!(Config::from_args(["--bogus".to_string()]).is_err());
        assert!(Config::from_args(["--python".to_string()]).is_err());
        assert_eq!(
            Config::from_args([]).unwrap().transport,
            TransportChoice::Stdio
        );
    }
}
