//! Bounded fuzz runs as property tests: seeded batches of 256 cases for
//! ZEROBOOT_FUZZ_SECS seconds (5 by default; CI runs 60), reproducible
//! batch by batch (the failing batch's seed is in the panic message).
//!
//! cargo-fuzz needs a nightly toolchain (sanitizer flags), and this project
//! has one stable toolchain, so the bounded runs are property tests.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// How long each fuzz run lasts.
pub fn budget() -> Duration {
    let secs = std::env::var("ZEROBOOT_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

/// Runs `test` on `strategy` in seeded batches of `batch` cases until the
/// time budget is spent (at least one batch).
pub fn fuzz<S: Strategy>(
    name: &str,
    batch: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let start = Instant::now();
    let mut batches = 0u64;
    while batches == 0 || start.elapsed() < budget() {
        let seed = 0x2e60_0000 + batches;
        let mut runner = TestRunner::new(Config {
            cases: batch,
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{name}, batch {batches} (seed {seed:#x}): {e}");
        }
        batches += 1;
    }
    eprintln!(
        "{name}: {} cases in {:?}",
        batches * u64::from(batch),
        start.elapsed()
    );
}
