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
    /// Act as a guest's system: set the clock, require the entropy reseed, reap orphans.
    pub system: bool,
    /// The template's settings file ([`crate::template::PATH`] in a guest).
    pub template: Option<PathBuf>,
}

/// The usage line printed on bad arguments.
pub const USAGE: &str = "usage: zeroboot-agent [--transport stdio|mailbox|serial[:PATH]] [--python PATH|none] [--system] [--template PATH]";

/// Interpreter used in a guest when none is named.
const GUEST_PYTHON: &str = "/usr/bin/python3";

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

fn parse_python(s: &str) -> Option<PathBuf> {
    (s != "none").then(|| PathBuf::from(s))
}

/// Finds `python3` on `PATH`.
fn python_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
}

impl Config {
    /// Settings for the guest's init, from the kernel command line:
    /// `zeroboot.transport=` (default mailbox) and `zeroboot.python=`.
    /// Dotted keys are kernel module parameters, so the kernel neither
    /// complains about them nor hands them to init as arguments.
    pub fn from_cmdline(cmdline: &str) -> Result<Config, String> {
        let mut config = Config {
            transport: TransportChoice::Mailbox,
            python: Path::new(GUEST_PYTHON)
                .is_file()
                .then(|| GUEST_PYTHON.into()),
            system: true,
            template: Some(crate::template::PATH.into()),
        };
        for word in cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix("zeroboot.transport=") {
                config.transport = parse_transport(v)?;
            } else if let Some(v) = word.strip_prefix("zeroboot.python=") {
                config.python = parse_python(v);
            }
        }
        Ok(config)
    }

    /// Settings for a test process, from its arguments (program name excluded).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Config, String> {
        let mut config = Config {
            transport: TransportChoice::Stdio,
            python: python_on_path(),
            system: false,
            template: None,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--transport" => config.transport = parse_transport(&value()?)?,
                "--python" => config.python = parse_python(&value()?),
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
            "console=ttyS0 quiet zeroboot.transport=serial:/dev/ttyS1 zeroboot.python=none",
        )
        .unwrap();
        assert_eq!(c.transport, TransportChoice::Serial("/dev/ttyS1".into()));
        assert_eq!(c.python, None);
        assert!(c.system);
        assert_eq!(
            Config::from_cmdline("quiet").unwrap().transport,
            TransportChoice::Mailbox
        );
        assert!(Config::from_cmdline("zeroboot.transport=carrier-pigeon").is_err());
    }

    #[test]
    fn args_parse_and_reject_unknowns() {
        let args = ["--transport", "serial", "--python", "/opt/py", "--system"].map(String::from);
        let c = Config::from_args(args).unwrap();
        assert_eq!(c.transport, TransportChoice::Serial("/dev/ttyS0".into()));
        assert_eq!(c.python, Some("/opt/py".into()));
        assert!(c.system);
        assert!(Config::from_args(["--bogus".to_string()]).is_err());
        assert!(Config::from_args(["--python".to_string()]).is_err());
        assert_eq!(
            Config::from_args([]).unwrap().transport,
            TransportChoice::Stdio
        );
    }
}
