//! RunCode on the bare guest, which has no interpreter: `bash` code is one
//! command line of the exec commands (words split on whitespace), so the
//! host's code-run path (streaming, deadlines, CodeEnd, contexts, branching)
//! is tested without Linux. Two words exist only here: `result WORDS...`
//! makes WORDS the run's result, `raise NAME VALUE` its error (exit 1).
//! A context is only a name remembered (the commands keep no state of their
//! own beyond `poke`), which is what `ListContexts` reports.

use zeroboot_proto::{
    AgentErrorCode, CodeEnd, CodeError, ContextEntry, ContextList, Exec, ExecParts, ExitStatus,
    Kind, Language, MAILBOX_SIZE, MAX_CONTEXT_NAME, Program, RunCode, Writer,
};

use crate::cell::Global;
use crate::channel::Channel;
use crate::commands;
use crate::output::Output;

/// Most contexts remembered.
const MAX_CONTEXTS: usize = 16;
/// Most words in a command line, and environment pairs.
const MAX_WORDS: usize = 64;

/// The names of the contexts used so far.
struct Contexts {
    names: [[u8; MAX_CONTEXT_NAME]; MAX_CONTEXTS],
    lens: [usize; MAX_CONTEXTS],
    count: usize,
}

static CONTEXTS: Global<Contexts> = Global::new(Contexts {
    names: [[0; MAX_CONTEXT_NAME]; MAX_CONTEXTS],
    lens: [0; MAX_CONTEXTS],
    count: 0,
});
/// The exec a command line becomes.
static EXEC: Global<[u8; MAILBOX_SIZE]> = Global::new([0; MAILBOX_SIZE]);

/// Remembers `name`; false when the table is full.
fn remember(name: &[u8]) -> bool {
    // SAFETY: the only borrow of CONTEXTS while a request is served.
    let c = unsafe { CONTEXTS.get() };
    if (0..c.count).any(|i| &c.names[i][..c.lens[i]] == name) {
        return true;
    }
    if c.count == MAX_CONTEXTS {
        return false;
    }
    c.names[c.count][..name.len()].copy_from_slice(name);
    c.lens[c.count] = name.len();
    c.count += 1;
    true
}

/// Answers ListContexts.
pub fn list(chan: &Channel) {
    // SAFETY: the only borrow of CONTEXTS while a request is served.
    let c = unsafe { CONTEXTS.get() };
    let entries = (0..c.count).map(|i| ContextEntry {
        name: &c.names[i][..c.lens[i]],
        language: Language::Bash,
    });
    chan.send(Kind::Contexts, |w| ContextList::encode(w, entries));
}

/// Runs one RunCode request; ends with exactly one final frame.
pub fn run(chan: &Channel, req: &RunCode<'_>) {
    if req.language != Language::Bash {
        return chan.send_error(
            AgentErrorCode::Unsupported,
            b"the bare guest runs bash command lines only",
        );
    }
    if !req.context.is_empty() && !remember(req.context) {
        return chan.send_error(AgentErrorCode::BadRequest, b"too many contexts");
    }
    let mut words: [&[u8]; MAX_WORDS] = [&[]; MAX_WORDS];
    let mut n = 0;
    for w in req
        .code
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        if n == MAX_WORDS {
            return chan.send_error(AgentErrorCode::BadRequest, b"too many words");
        }
        words[n] = w;
        n += 1;
    }
    let mut env: [(&[u8], &[u8]); MAX_WORDS] = [(&[], &[]); MAX_WORDS];
    let mut m = 0;
    for pair in req.env_pairs() {
        if m == MAX_WORDS {
            return chan.send_error(AgentErrorCode::BadRequest, b"too many variables");
        }
        env[m] = pair;
        m += 1;
    }
    // SAFETY: the only borrow of EXEC while a request is served.
    let buf = unsafe { EXEC.get() };
    let mut w = Writer::new(buf);
    let encoded = Exec::encode(
        &mut w,
        ExecParts {
            clock_ns: req.clock_ns,
            seed: req.seed,
            timeout_ms: req.timeout_ms,
            program: Program::Argv,
            argv: words[..n].iter().copied(),
            env: env[..m].iter().copied(),
            cwd: req.cwd,
            stdin: &[],
        },
    );
    let len = w.position();
    let exec = match encoded.ok().and_then(|()| Exec::decode(&buf[..len]).ok()) {
        Some(e) => e,
        None => return chan.send_error(AgentErrorCode::BadRequest, b"code too long"),
    };
    let mut argv = exec.argv.iter();
    let (mut result, mut error) = (None, None);
    let code = match argv.next() {
        Some(b"result") => {
            // The rest of the line, as written.
            let line = req.code.trim_ascii();
            result = Some(line[b"result".len()..].trim_ascii());
            0
        }
        Some(b"raise") => {
            let name = argv.next().unwrap_or(b"Error");
            let value = argv.next().unwrap_or(b"");
            error = Some(CodeError {
                name,
                value,
                traceback: b"bare: raised by the cell\n",
            });
            1
        }
        _ => {
            let mut out = Output::new(chan);
            let code = commands::run(&exec, &mut out);
            out.flush();
            code
        }
    };
    let end = CodeEnd {
        status: ExitStatus {
            code,
            signal: 0,
            flags: 0,
        },
        result,
        error,
    };
    chan.send(Kind::CodeEnd, |w| end.encode(w));
}
