use std::time::Instant;
use zeroboot::agent::ExecRequest;
use zeroboot::engine::{Engine, EngineConfig, ExecOptions};

fn main() {
    let t = Instant::now();
    let engine = Engine::new(EngineConfig::default()).unwrap();
    println!("open {:?}", t.elapsed());
    let t = Instant::now();
    let tpl = engine.load_builtin("bare").unwrap();
    println!("template {:?} {:?}", t.elapsed(), tpl);
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for _ in 0..3 {
        let f = engine.fork(&tpl.template).unwrap();
        println!("fork {:?}", f);
        let t = Instant::now();
        let r = engine.exec(
            &f.sandbox,
            &ExecRequest {
                argv: argv.clone(),
                ..Default::default()
            },
            &ExecOptions {
                timeout: Some(std::time::Duration::from_secs(2)),
                ..Default::default()
            },
            &mut |_, _| {},
        );
        println!(
            "exec {:?} {:?}",
            t.elapsed(),
            r.as_ref().map(|r| (
                String::from_utf8_lossy(&r.stdout).to_string(),
                String::from_utf8_lossy(&r.stderr).to_string(),
                r.exit_code
            ))
        );
        println!("stats {:?}", engine.stats(&f.sandbox));
        engine.kill(&f.sandbox).unwrap();
    }
}
