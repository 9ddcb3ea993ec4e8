import { existsSync } from "node:fs";

/** Why the KVM tests cannot run here, or undefined when they can. Throws when ZEROBOOT_REQUIRE_KVM=1. */
export function kvmSkip(): string | undefined {
  if (existsSync("/dev/kvm")) return undefined;
  const msg = "/dev/kvm is missing: skipping the tests that need the real worker (set ZEROBOOT_REQUIRE_KVM=1 to fail instead)";
  if (process.env.ZEROBOOT_REQUIRE_KVM === "1") throw new Error(msg.replace(": skipping", " and ZEROBOOT_REQUIRE_KVM=1"));
  console.log(`# SKIP ${msg}`);
  return msg;
}
