#!/usr/bin/env python3
"""Generates zeroboot/_generated.py from the worker's OpenRPC document (schema/openrpc.json):
TypedDicts for every method's params and result and every notification, and one exception class
per documented error code.

    python3 scripts/gen_types.py           write zeroboot/_generated.py
    python3 scripts/gen_types.py --check   exit 1 if it differs from what the schema gives

tests/test_schema.py runs the same check, so schema drift fails the tests."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SCHEMA_PATH = Path(os.environ.get("ZEROBOOT_SCHEMA", PACKAGE_DIR.parent.parent / "schema" / "openrpc.json"))
GENERATED_PATH = PACKAGE_DIR / "zeroboot" / "_generated.py"


def pascal(s: str) -> str:
    s = re.sub(r"^\$/", "", s)
    return "".join(w[0].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", s) if w)


def resolve_ref(doc: Dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    o: Any = doc
    for k in ref[2:].split("/"):
        o = o[k.replace("~1", "/").replace("~0", "~")]
    return o


class Gen:
    def __init__(self, doc: Dict[str, Any]) -> None:
        self.doc = doc
        self.out: List[str] = []
        self.anon = 0

    def py_type(self, schema: Any, hint: str) -> str:
        if schema is True or schema is None or schema == {}:
            return "Any"
        if "$ref" in schema:
            m = re.match(r"^#/components/schemas/(.+)$", schema["$ref"])
            if m:
                return f'"{pascal(m.group(1))}"'
            return self.py_type(resolve_ref(self.doc, schema["$ref"]), hint)
        if "const" in schema:
            return f"Literal[{schema['const']!r}]"
        if "enum" in schema:
            return "Literal[" + ", ".join(repr(v) for v in schema["enum"]) + "]"
        alts = schema.get("oneOf") or schema.get("anyOf")
        if alts:
            base = {k: v for k, v in schema.items() if k not in ("oneOf", "anyOf")}
            types = []
            for i, a in enumerate(alts):
                if "$ref" not in a and (base.get("properties") or base.get("type")):
                    a = {**base, **a, "properties": {**base.get("properties", {}), **a.get("properties", {})},
                         "required": sorted(set(base.get("required", [])) | set(a.get("required", [])))}
                types.append(self.py_type(a, f"{hint}{i + 1}"))
            return "Union[" + ", ".join(dict.fromkeys(types)) + "]"
        if "allOf" in schema:
            return "Any"
        types = schema.get("type")
        if types is None:
            types = ["object"] if "properties" in schema else []
        if isinstance(types, str):
            types = [types]
        if not types:
            return "Any"
        out = [self.scalar(t, schema, hint) for t in types]
        return out[0] if len(out) == 1 else "Union[" + ", ".join(out) + "]"

    def scalar(self, t: str, schema: Dict[str, Any], hint: str) -> str:
        if t == "string":
            return "str"
        if t == "integer":
            return "int"
        if t == "number":
            return "float"
        if t == "boolean":
            return "bool"
        if t == "null":
            return "None"
        if t == "array":
            return f"List[{self.py_type(schema.get('items', True), hint + 'Item')}]"
        if t == "object":
            if not schema.get("properties"):
                ap = schema.get("additionalProperties", True)
                return f"Dict[str, {self.py_type(ap, hint + 'Value')}]" if ap is not False else "Dict[str, Any]"
            return self.typed_dict(hint, schema)
        raise ValueError(f"unsupported type {t}")

    def typed_dict(self, name: str, schema: Dict[str, Any], doc: str = "") -> str:
        required = set(schema.get("required", []))
        fields: List[Tuple[str, str, str]] = []
        for k, v in schema.get("properties", {}).items():
            t = self.py_type(v, name + pascal(k))
            fields.append((k, t if k in required else f"NotRequired[{t}]", v.get("description", "")))
        lines = [f'{name} = TypedDict("{name}", {{']
        for k, t, d in fields:
            lines.append(f"    {k!r}: {t},{'  # ' + d.splitlines()[0] if d else ''}")
        lines.append("})")
        if doc or schema.get("description"):
            lines.insert(0, f"# {(doc or schema['description']).splitlines()[0]}")
        self.out.append("\n".join(lines) + "\n")
        return f'"{name}"'

    def params_schema(self, params: List[Dict[str, Any]]) -> Dict[str, Any]:
        params = [resolve_ref(self.doc, p["$ref"]) if "$ref" in p else p for p in params]
        return {
            "type": "object",
            "properties": {p["name"]: {"description": p.get("summary") or p.get("description", ""), **p.get("schema", {})}
                           for p in params},
            "required": [p["name"] for p in params if p.get("required")],
        }

    def run(self) -> str:
        doc = self.doc
        for name, s in doc.get("components", {}).get("schemas", {}).items():
            t = self.py_type(s, pascal(name))
            if t != f'"{pascal(name)}"':
                self.out.append(f"{pascal(name)} = {t}\n")
        methods: List[str] = []
        notifications: List[str] = []
        for m in doc.get("methods", []):
            if "$ref" in m:
                m = resolve_ref(doc, m["$ref"])
            base = pascal(m["name"])
            self.typed_dict(f"{base}Params", self.params_schema(m.get("params", [])), f"Params of {m['name']}")
            if m.get("result") and not m.get("x-notification"):
                r = m["result"]
                r = resolve_ref(doc, r["$ref"]) if "$ref" in r else r
                t = self.py_type(r.get("schema", True), f"{base}Result")
                if t != f'"{base}Result"':
                    self.out.append(f"{base}Result = {t}\n")
                methods.append(m["name"])
            else:
                notifications.append(m["name"])
        for n in doc.get("x-notifications", []):
            self.typed_dict(f"{pascal(n['name'])}Params", self.params_schema(n.get("params", [])), f"Params of the {n['name']} notification")
            notifications.append(n["name"])

        errors: Dict[int, Dict[str, Any]] = {}
        def add(e: Dict[str, Any], key: str = "") -> None:
            e = resolve_ref(doc, e["$ref"]) if "$ref" in e else e
            errors.setdefault(e["code"], {**e, "x-name": key} if key else e)
        for k, e in doc.get("components", {}).get("errors", {}).items():
            add(e, k)
        for m in doc.get("methods", []):
            for e in (resolve_ref(doc, m["$ref"]) if "$ref" in m else m).get("errors", []):
                add(e)

        head = [
            "# GENERATED by scripts/gen_types.py from schema/openrpc.json "
            f"(OpenRPC {doc.get('openrpc')}, {doc.get('info', {}).get('title', '')} {doc.get('info', {}).get('version', '')}).",
            "# Do not edit: run `python3 scripts/gen_types.py`. tests/test_schema.py fails when this file and the schema disagree.",
            "# fmt: off",
            "from __future__ import annotations",
            "",
            "import sys",
            "from typing import Any, Dict, List, Literal, Optional, Type, Union",
            "",
            "if sys.version_info >= (3, 11):",
            "    from typing import NotRequired, TypedDict",
            "else:  # pragma: no cover",
            "    from typing_extensions import NotRequired, TypedDict",
            "",
            "from ._errors import RpcError",
            "",
            f"METHOD_NAMES = {tuple(methods)!r}",
            f"NOTIFICATION_NAMES = {tuple(notifications)!r}",
            "",
        ]
        body = "\n".join(self.out)
        err_lines = ["", "# Error codes the worker documents, one exception class each."]
        names = {}
        for code in sorted(errors):
            e = errors[code]
            kind = e.get("x-name") or e["message"]  # its name in components.errors
            cls = pascal(kind)
            cls = cls if cls.endswith("Error") else cls + "Error"
            names[code] = cls
            desc = e["message"] + (". " + e["description"] if e.get("description") else "")
            err_lines += ["", "", f"class {cls}(RpcError):", f'    """{code}: {desc}"""', "", f"    code = {code}"]
        err_lines += ["", "", "ERROR_CLASSES: Dict[int, Type[RpcError]] = {"]
        err_lines += [f"    {c}: {n}," for c, n in names.items()]
        err_lines += ["}", "", "", "def error_from_code(code: int, message: str, data: Any = None, method: str = \"\") -> RpcError:",
                      '    """The typed exception for a JSON-RPC error object (RpcError for codes the schema does not list)."""',
                      "    return ERROR_CLASSES.get(code, RpcError)(code, message, data, method)", ""]
        return "\n".join(head) + "\n" + body + "\n".join(err_lines)


def generate(doc: Dict[str, Any]) -> str:
    return Gen(doc).run()


def main() -> int:
    text = generate(json.loads(SCHEMA_PATH.read_text()))
    if "--check" in sys.argv:
        if GENERATED_PATH.read_text() != text:
            print("zeroboot/_generated.py is out of date with schema/openrpc.json: run scripts/gen_types.py", file=sys.stderr)
            return 1
        return 0
    GENERATED_PATH.write_text(text)
    print(f"wrote {GENERATED_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
