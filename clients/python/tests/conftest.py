import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_collection_modifyitems(config, items):
    if os.path.exists("/dev/kvm"):
        return
    msg = "/dev/kvm is missing: skipping the tests that need the real worker (set ZEROBOOT_REQUIRE_KVM=1 to fail instead)"
    if os.environ.get("ZEROBOOT_REQUIRE_KVM") == "1":
        raise pytest.UsageError(msg.replace(": skipping", " and ZEROBOOT_REQUIRE_KVM=1 is set; not skipping"))
    print(f"SKIP {msg}", file=sys.stderr)
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=msg))


def pytest_configure(config):
    config.addinivalue_line("markers", "kvm: needs /dev/kvm and the real worker")
