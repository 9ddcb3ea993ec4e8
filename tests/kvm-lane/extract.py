#!/usr/bin/env python3
"""Copies the data a lane run printed between ZB-LANE-BEGIN-DATA / ZB-LANE-END-DATA
markers on the L1 serial console into OUT/<name>.json. Exits 1 if a block is not
exactly one JSON value (the bench contract), leaving the raw text in OUT/<name>.out."""
import json
import re
import sys

log, out = sys.argv[1], sys.argv[2]
text = open(log, errors="replace").read()
bad = False
for m in re.finditer(r"ZB-LANE-BEGIN-DATA (\S+)\n(.*?)\nZB-LANE-END-DATA \1\n", text, re.S):
    name, body = m.group(1), m.group(2)
    # Drop kernel printk lines that may interleave on the console.
    lines = [l for l in body.splitlines() if l.strip() and not re.match(r"^\[\s*\d+\.\d+\] ", l)]
    payload = "\n".join(lines)
    try:
        json.loads(payload)
    except ValueError as e:
        open(f"{out}/{name}.out", "w").write(body + "\n")
        print(f"[lane] FAIL: {name} stdout is not one JSON value ({e}); raw copy in {out}/{name}.out",
              file=sys.stderr)
        bad = True
        continue
    open(f"{out}/{name}.json", "w").write(payload + "\n")
    print(f"[lane] {name} output -> {out}/{name}.json", file=sys.stderr)
sys.exit(1 if bad else 0)
