import os
import sys

import pytest


def pytest_collection_modifyitems(config, items):
    if os.path.exists("/dev/kvm"):
        return
    msg = "/dev/kvm is missing: skipping the MCP tests (set ZEROBOOT_REQUIRE_KVM=1 to fail instead)"
    if os.environ.get("ZEROBOOT_REQUIRE_KVM") == "1":
        raise pytest.UsageError(msg.replace(": skipping", " and ZEROBOOT_REQUIRE_KVM=1 is set; not skipping"))
    print(f"SKIP {msg}", file=sys.stderr)
    for item in items:
        item.add_marker(pytest.mark.skip(reason=msg))
