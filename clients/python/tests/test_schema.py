import importlib.util
import json
import re
from pathlib import Path

import zeroboot

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gen_types", ROOT / "scripts" / "gen_types.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_generated_matches_schema():
    expected = gen.generate(json.loads(gen.SCHEMA_PATH.read_text()))
    assert gen.GENERATED_PATH.read_text() == expected, "zeroboot/_generated.py drifted from schema/openrpc.json: run scripts/gen_types.py"


def test_client_uses_only_documented_methods():
    src = (ROOT / "zeroboot" / "_client.py").read_text()
    used = set(re.findall(r'call\("([a-z$/._]+)"', src))
    assert used, "found the client's calls"
    for m in used:
        assert m in zeroboot.METHOD_NAMES, f"client calls {m}, not in schema"
    assert "sandbox.output" in zeroboot.NOTIFICATION_NAMES
    assert -32800 in zeroboot.ERROR_CLASSES


def test_fork_sends_network_false_and_leaves_none_to_the_template():
    from zeroboot._client import _fork_params

    assert _fork_params("tpl-1", False) == {"template": "tpl-1", "network": False}
    assert _fork_params("tpl-1", None) == {"template": "tpl-1"}
    assert _fork_params("tpl-1", {"allow": ["a:1"]})["network"] == {"allow": ["a:1"]}
