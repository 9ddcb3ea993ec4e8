//! The method table: every method this worker knows and the type its params
//! are read into, in one place. Adding a method is one line here, one arm in
//! [`dispatch`](super::dispatch) (the compiler asks for it), and its entry in
//! schema/openrpc.json (a test checks the two lists are the same).

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};

use super::params::*;

macro_rules! methods {
    ($($(#[$doc:meta])* $name:literal => $variant:ident($params:ty);)*) => {
        /// A call: a method and its params, parsed.
        #[derive(Debug)]
        pub enum Call {
            $($(#[$doc])* $variant($params),)*
        }

        impl Call {
            /// The method's name.
            pub fn method(&self) -> &'static str {
                match self {
                    $(Call::$variant(_) => $name,)*
                }
            }
        }

        /// Every method's name.
        pub const METHODS: &[&str] = &[$($name),*];

        /// True for a method in the table.
        pub fn known(method: &str) -> bool {
            matches!(method, $($name)|*)
        }

        /// Reads `params` into the type of `method`; `None` if there is no
        /// such method.
        pub fn parse<'de, D: Deserializer<'de>>(
            method: &str,
            params: D,
        ) -> Option<Result<Call, D::Error>> {
            match method {
                $($name => Some(<$params>::deserialize(params).map(Call::$variant)),)*
                _ => None,
            }
        }
    };
}

methods! {
    /// Load a built-in template or a template file.
    "template.load" => TemplateLoad(TemplateLoad);
    /// Boot a Linux guest and capture it.
    "template.build" => TemplateBuild(TemplateBuild);
    /// List templates.
    "template.list" => TemplateList(Empty);
    /// Unload a template.
    "template.unload" => TemplateUnload(TemplateUnload);
    /// Write a template to a file.
    "template.save" => TemplateSave(TemplateSave);
    /// Fork one or `count` sandboxes.
    "sandbox.fork" => SandboxFork(SandboxFork);
    /// Run a program in a sandbox.
    "sandbox.exec" => SandboxExec(SandboxExec);
    /// Fork, exec and kill in one call.
    "sandbox.run" => SandboxRun(SandboxRun);
    /// Run code with notebook semantics, in a sandbox or a fresh fork.
    "sandbox.run_code" => SandboxRunCode(SandboxRunCode);
    /// The persistent contexts of a sandbox.
    "sandbox.contexts" => SandboxContexts(SandboxRef);
    /// Kill a sandbox.
    "sandbox.kill" => SandboxKill(SandboxRef);
    /// List sandboxes.
    "sandbox.list" => SandboxList(SandboxList);
    /// Resource use of a sandbox.
    "sandbox.stats" => SandboxStats(SandboxRef);
    /// A live sandbox becomes a template.
    "sandbox.snapshot" => SandboxSnapshot(SandboxSnapshot);
    /// Write a file into a sandbox.
    "sandbox.write_file" => SandboxWriteFile(SandboxWriteFile);
    /// Read a file from a sandbox.
    "sandbox.read_file" => SandboxReadFile(SandboxReadFile);
    /// Do nothing: the round trip of the protocol alone.
    "worker.ping" => WorkerPing(Empty);
    /// Describe the worker.
    "worker.info" => WorkerInfo(Empty);
    /// The OpenRPC document.
    "rpc.discover" => RpcDiscover(Empty);
    /// Stop all work.
    "shutdown" => Shutdown(Empty);
    /// End the worker (a notification).
    "exit" => Exit(IgnoredAny);
    /// Cancel a running call (a notification).
    "$/cancelRequest" => CancelRequest(CancelParams);
}

impl Call {
    /// True for the two methods that exist only as notifications; a request
    /// for either is a method not found.
    pub fn notification_only(&self) -> bool {
        matches!(self, Call::Exit(_) | Call::CancelRequest(_))
    }
}
