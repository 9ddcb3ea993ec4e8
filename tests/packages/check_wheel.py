"""Run by tests/packages/test with the fresh virtual environment's interpreter, in an empty
directory, with no cargo, no ZEROBOOT_BIN and no source checkout in reach: the wheel alone must
give the client its worker."""
import os
import shutil
import sys

from zeroboot import Zeroboot, find_binary

assert shutil.which("cargo") is None, "cargo must not be reachable here"
assert "ZEROBOOT_BIN" not in os.environ
binary = find_binary()
assert binary == os.path.realpath(os.path.join(sys.prefix, "bin", "zeroboot")), binary
with Zeroboot.start() as zb:
    assert zb.binary == binary
    t = zb.load_template(builtin="bare")
    with zb.fork(t) as sb:
        r = sb.exec(["echo", "from", "the", "wheel"])
        assert (r.stdout, r.exit_code) == ("from the wheel\n", 0), r
print(f"wheel: ok ({binary})")
