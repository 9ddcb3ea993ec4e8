//! Whether a vCPU captured on another host can run on this one. A guest
//! trusts the CPUID it booted with: it uses AVX-512 if CPUID said so, and an
//! instruction this host lacks is a #UD deep inside the guest, long after
//! the load succeeded. So a template file's CPUID is compared with what this
//! host's KVM supports before anything runs: the same vendor, and no feature
//! bit set that this host cannot offer.

use kvm_bindings::kvm_cpuid_entry2;

/// The CPUID registers that are feature flags: (leaf, subleaf, register
/// name, bits that are not features and are ignored).
const FEATURE_WORDS: &[(u32, u32, Reg, u32)] = &[
    // OSXSAVE (27) mirrors CR4; TSC-deadline (24) and hypervisor (31) are
    // set by the VMM itself (see `linux/cpuid.rs`), not by KVM.
    (0x1, 0, Reg::Ecx, 1 << 27 | 1 << 24 | 1 << 31),
    (0x1, 0, Reg::Edx, 0),
    (0x7, 0, Reg::Ebx, 0),
    // OSPKE (4) mirrors CR4; LA57 (16) is only ever cleared by the VMM.
    (0x7, 0, Reg::Ecx, 1 << 4),
    (0x7, 0, Reg::Edx, 0),
    (0x7, 1, Reg::Eax, 0),
    // XSAVE state components (XCR0 bits the guest may set) and XSAVE variants.
    (0xd, 0, Reg::Eax, 0),
    (0xd, 0, Reg::Edx, 0),
    (0xd, 1, Reg::Eax, 0),
    (0x8000_0001, 0, Reg::Ecx, 0),
    (0x8000_0001, 0, Reg::Edx, 0),
    (0x8000_0008, 0, Reg::Ebx, 0),
];

#[derive(Clone, Copy, Debug)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    fn of(self, e: &kvm_cpuid_entry2) -> u32 {
        match self {
            Reg::Eax => e.eax,
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        }
    }
}

fn leaf(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

/// The vendor string of leaf 0 ("GenuineIntel", "AuthenticAMD"...).
fn vendor(entries: &[kvm_cpuid_entry2]) -> String {
    leaf(entries, 0, 0).map_or_else(String::new, |e| {
        [e.ebx, e.edx, e.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .map(char::from)
            .collect()
    })
}

/// Why a guest captured with CPUID `saved` cannot run on a host whose KVM
/// supports `host`, or `None` when it can.
pub fn incompatibility(saved: &[kvm_cpuid_entry2], host: &[kvm_cpuid_entry2]) -> Option<String> {
    let (theirs, ours) = (vendor(saved), vendor(host));
    if theirs != ours {
        return Some(format!(
            "captured on a {theirs:?} CPU, this host is {ours:?}"
        ));
    }
    let missing: Vec<String> = FEATURE_WORDS
        .iter()
        .filter_map(|&(function, index, reg, ignored)| {
            let want = leaf(saved, function, index).map_or(0, |e| reg.of(e)) & !ignored;
            let have = leaf(host, function, index).map_or(0, |e| reg.of(e));
            let lacking = want & !have;
            (lacking != 0)
                .then(|| format!("leaf {function:#x}.{index} {reg:?} bits {lacking:#010x}"))
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "this host's KVM lacks CPU features the guest was told it has: {}",
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn intel(leaf7_ebx: u32) -> Vec<kvm_cpuid_entry2> {
        // "GenuineIntel" in EBX, EDX, ECX order.
        vec![
            entry(0, 0, [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(1, 0, [0, 0, 1 << 24 | 1 << 31, 1]),
            entry(7, 0, [0, leaf7_ebx, 0, 0]),
        ]
    }

    #[test]
    fn the_same_cpu_is_compatible() {
        assert_eq!(incompatibility(&intel(0b101), &intel(0b101)), None);
        // A host with more features takes a guest that uses fewer.
        assert_eq!(incompatibility(&intel(0b001), &intel(0b111)), None);
    }

    #[test]
    fn a_feature_the_host_lacks_is_named() {
        let why = incompatibility(&intel(0b111), &intel(0b001)).unwrap();
        assert!(why.contains("leaf 0x7.0 Ebx bits 0x00000006"), "{why}");
    }

    #[test]
    fn bits_the_vmm_sets_itself_do_not_count() {
        // The saved leaf 1 has TSC-deadline and hypervisor set by the VMM.
        let mut host = intel(0);
        host[1].ecx = 0;
        assert_eq!(incompatibility(&intel(0), &host), None);
    }

    #[test]
    fn another_vendor_is_refused() {
        let mut amd = intel(0);
        // "AuthenticAMD"
        amd[0] = entry(0, 0, [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65]);
        let why = incompatibility(&amd, &intel(0)).unwrap();
        assert!(
            why.contains("AuthenticAMD") && why.contains("GenuineIntel"),
            "{why}"
        );
    }
}
