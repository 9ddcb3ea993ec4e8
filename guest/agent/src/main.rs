//! zeroboot's Linux guest agent.
//!
//! In a guest image it is `/init`: it mounts the kernel filesystems, starts
//! and warms a Python zygote and a spare worker per language (Python, and
//! JavaScript when the image has Node.js), announces Ready to the host and
//! then runs the host's requests (argv and Python execs, code runs and
//! contexts, file reads and writes) for ever.
//! As a plain process (`--transport stdio`) it serves the same protocol on
//! stdin/stdout, which is how its logic is tested without a VM.

mod config;
mod entropy;
mod exec;
mod files;
mod frames;
mod net;
mod reaper;
mod server;
mod sys;
mod system;
mod template;
mod transport;

use config::{Config, TransportChoice};
use exec::{Node, Runner};
use std::time::Duration;
use template::TemplateConfig;
use transport::{Mailbox, Stream, Transport, TransportError};

fn open_transport(choice: &TransportChoice) -> std::io::Result<Box<dyn Transport>> {
    Ok(match choice {
        TransportChoice::Mailbox => Box::new(Mailbox::register()?),
        TransportChoice::Serial(path) => {
            let port = transport::open_serial(&path.to_string_lossy())?;
            Box::new(Stream::new(port.try_clone()?, port))
        }
        TransportChoice::Stdio => Box::new(Stream::new(
            std::io::stdin().lock(),
            std::io::stdout().lock(),
        )),
    })
}

/// The template's settings (none when the file is absent or unreadable:
/// the host checks a template's preloads before its snapshot).
fn template_config(config: &Config) -> TemplateConfig {
    let Some(path) = &config.template else {
        return TemplateConfig::default();
    };
    TemplateConfig::load(path).unwrap_or_else(|e| {
        eprintln!("zeroboot-agent: {e}; running without the template's settings");
        TemplateConfig::default()
    })
}

fn start_runner(config: &Config) -> Runner {
    // A worker whose zygote died is handed to the agent, whatever its PID.
    if let Err(e) = sys::become_subreaper() {
        eprintln!("zeroboot-agent: cannot become a subreaper: {e}");
    }
    let template = template_config(config);
    let python = match &template.python {
        Some(choice) => choice.clone(),
        None => config.python.clone(),
    };
    let node = config.node.clone().map(|path| Node {
        path,
        addon: config.node_addon.clone(),
    });
    Runner::start(
        python.as_deref(),
        node,
        exec::find_shell(),
        config.spares,
        config.system,
        template,
    )
}

/// The guest's init: never returns (the kernel panics if PID 1 exits).
fn run_as_init() -> ! {
    system::init();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let config = Config::from_cmdline(&cmdline).unwrap_or_else(|e| {
        eprintln!("zeroboot-agent: {e}; using the mailbox transport");
        Config {
            transport: TransportChoice::Mailbox,
            ..Config::from_cmdline("").expect("empty cmdline parses")
        }
    });
    let started = std::time::Instant::now();
    let mut runner = start_runner(&config);
    eprintln!(
        "zeroboot-agent: interpreters warm in {} ms",
        started.elapsed().as_millis()
    );
    loop {
        match open_transport(&config.transport) {
            Ok(mut t) => {
                let e = server::serve(t.as_mut(), &mut runner);
                eprintln!("zeroboot-agent: {e}; reopening the transport");
            }
            Err(e) => eprintln!("zeroboot-agent: cannot open {:?}: {e}", config.transport),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn main() {
    if sys::is_init() {
        run_as_init();
    }
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zeroboot-agent: {e}\n{}", config::USAGE);
            std::process::exit(2);
        }
    };
    let mut runner = start_runner(&config);
    let mut t = match open_transport(&config.transport) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("zeroboot-agent: cannot open {:?}: {e}", config.transport);
            std::process::exit(1);
        }
    };
    match server::serve(t.as_mut(), &mut runner) {
        TransportError::Closed => {}
        e => {
            eprintln!("zeroboot-agent: {e}");
            std::process::exit(1);
        }
    }
}
