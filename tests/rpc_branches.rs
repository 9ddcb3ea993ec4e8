//! Branches through the worker: snapshot then fork many, branches of
//! branches, unloading a branch while its forks run on, a branch saved by one
//! worker process and loaded by another, and template files refused with
//! their typed errors. Every message is checked against the schema.

#[path = "common/rpc_client.rs"]
mod rpc_client;
#[path = "common/rpc_schema.rs"]
mod rpc_schema;

use rpc_client::{Framing, Worker, kvm_or_skip};
use serde_json::{Value, json};

fn exec(w: &mut Worker, sandbox: &str, argv: &[&str]) -> Value {
    w.ok("sandbox.exec", json!({"sandbox": sandbox, "argv": argv}))
}

fn peek(w: &mut Worker, sandbox: &str) -> String {
    exec(w, sandbox, &["peek"])["stdout"]
        .as_str()
        .unwrap()
        .to_string()
}

fn fork_many(w: &mut Worker, template: &str, count: usize) -> Vec<String> {
    let r = w.ok(
        "sandbox.fork",
        json!({"template": template, "count": count}),
    );
    r["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sandbox"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn branch_fork_many_and_branch_again() {
    if !kvm_or_skip() {
        return;
    }
    let mut w = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = w.load_bare();
    let sb = w.fork(&tpl);
    exec(&mut w, &sb, &["poke", "0x51"]);
    let b = w.ok("sandbox.snapshot", json!({"sandbox": sb}));
    assert_eq!(b["depth"], 1);
    assert!(b["memory"]["own_bytes"].as_u64().unwrap() <= 64 << 10);
    let bid = b["template"].as_str().unwrap().to_string();
    let kids = fork_many(&mut w, &bid, 4);
    for (i, k) in kids.iter().enumerate() {
        assert_eq!(peek(&mut w, k), "0x0000000000000051\n");
        exec(&mut w, k, &["poke", &(i + 1).to_string()]);
    }
    // A branch of a branch, and its parent unloaded while forks run on.
    let b2 = w.ok("sandbox.snapshot", json!({"sandbox": kids[2]}));
    assert_eq!(b2["depth"], 2);
    let e = w.err("template.unload", json!({"template": bid}));
    assert_eq!(e["code"], 1003);
    let r = w.ok(
        "template.unload",
        json!({"template": bid, "keep_sandboxes": true}),
    );
    assert_eq!(r["killed"], 0);
    let e = w.err_unchecked(
        "template.unload",
        json!({"template": tpl, "force": true, "keep_sandboxes": true}),
    );
    assert_eq!(e["code"], -32602);
    let g = w.fork(b2["template"].as_str().unwrap());
    assert_eq!(peek(&mut w, &g), "0x0000000000000003\n");
    for (i, k) in kids.iter().enumerate() {
        assert_eq!(peek(&mut w, k), format!("{:#018x}\n", i + 1));
    }
    assert_eq!(peek(&mut w, &sb), "0x0000000000000051\n");
    // A full copy is a template of its own.
    let full = w.ok(
        "sandbox.snapshot",
        json!({"sandbox": sb, "full_copy": true}),
    );
    assert_eq!(full["depth"], 0);
    let f = w.fork(full["template"].as_str().unwrap());
    assert_eq!(peek(&mut w, &f), "0x0000000000000051\n");
    w.shutdown();
}

#[test]
fn a_branch_saved_by_one_worker_is_loaded_by_another() {
    if !kvm_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("zeroboot-rpc-branch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("branch.zbt");
    let path_s = path.to_str().unwrap();

    let mut a = Worker::spawn(Framing::Ndjson, &[]);
    let tpl = a.load_bare();
    let sb = a.fork(&tpl);
    exec(&mut a, &sb, &["poke", "0xfeed"]);
    exec(&mut a, &sb, &["dirty", "50"]);
    let b = a.ok("sandbox.snapshot", json!({"sandbox": sb}));
    let child = a.fork(b["template"].as_str().unwrap());
    exec(&mut a, &child, &["poke", "0xbeef"]);
    let b2 = a.ok("sandbox.snapshot", json!({"sandbox": child}));
    a.ok(
        "template.save",
        json!({"template": b2["template"], "path": path_s}),
    );
    // Saving again to the same name is refused, and the file is untouched.
    let e = a.err(
        "template.save",
        json!({"template": b2["template"], "path": path_s}),
    );
    assert_eq!(e["code"], 1012);
    a.shutdown();

    let mut b = Worker::spawn(Framing::Lsp, &[]);
    let loaded = b.ok("template.load", json!({"path": path_s}));
    assert_eq!(loaded["depth"], 0);
    let t = loaded["template"].as_str().unwrap().to_string();
    let x = b.fork(&t);
    assert_eq!(peek(&mut b, &x), "0x000000000000beef\n");
    let dirty = exec(&mut b, &x, &["peek", "0x800000"]);
    assert_eq!(
        dirty["stdout"], "0x0000000000000001\n",
        "the dirtied pages came too"
    );
    // Memory given with a path is refused: the file says its size.
    let e = b.err_unchecked("template.load", json!({"path": path_s, "memory_mib": 64}));
    assert_eq!(e["code"], -32602);
    // A FIFO is refused at once, not waited on.
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path string and mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = b.err("template.load", json!({"path": fifo.to_str().unwrap()}));
    assert_eq!(e["code"], 1012);
    assert_eq!(e["data"]["kind"], "template_file");
    b.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}
