//! `zeroboot doctor`: what this host can do, in plain words.

use std::process::ExitCode;

use zeroboot::engine::{Engine, EngineConfig};
use zeroboot::vmm::Flavor;

pub fn main() -> ExitCode {
    println!("zeroboot {}", env!("CARGO_PKG_VERSION"));
    let engine = match Engine::new(EngineConfig::default()) {
        Ok(e) => e,
        Err(e) => {
            super::report(&e);
            println!(
                "KVM: unavailable. zeroboot needs read/write access to /dev/kvm (run as root or join the kvm group)."
            );
            return ExitCode::FAILURE;
        }
    };
    match engine.flavor() {
        Flavor::Pvm => println!(
            "KVM: kvm-pvm (software hypervisor). Bare-guest sandboxes work; a stock Linux guest cannot boot here \
             (kernel-mode code is emulated instruction by instruction). Linux guests need hardware KVM."
        ),
        Flavor::Hardware => {
            println!("KVM: hardware virtualization (VT-x/AMD-V). Bare and Linux guests can run.")
        }
    }
    let nofile = zeroboot::vmm::raise_nofile();
    println!("open-file limit: {nofile} (each sandbox holds 2 descriptors)");
    match engine.load_builtin("bare") {
        Ok(t) => println!(
            "bare template: loads ({} MiB guest memory)",
            t.memory_bytes >> 20
        ),
        Err(e) => {
            super::report(&e);
            return ExitCode::FAILURE;
        }
    }
    match zeroboot::image::cached(None) {
        Ok(found) if found.is_empty() => println!(
            "Linux guest image: none built yet (`zeroboot image build` fetches the kernel and builds the initramfs)"
        ),
        Ok(found) => {
            println!("Linux guest image files in the cache:");
            for path in found {
                println!("  {}", path.display());
            }
        }
        Err(e) => super::report(&e),
    }
    engine.shutdown();
    ExitCode::SUCCESS
}
