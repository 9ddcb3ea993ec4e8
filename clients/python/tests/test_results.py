"""Result objects built from the wire hold every field, as their constructors would make them."""

import dataclasses

from zeroboot._client import CodeResult, ExecResult, RunResult

WIRE = {"sandbox": "sb-2", "fork_us": 31, "stdout": "hello\n", "stderr": "", "encoding": "utf8", "exit_code": 0,
        "signal": None, "timed_out": False, "truncated": False, "duration_us": 2098, "result": "2", "error": None}


def test_every_field_is_set_and_equal_to_a_constructed_result():
    for cls in (ExecResult, RunResult, CodeResult):
        built = cls._from(WIRE)
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(vars(built)) == names, cls
        assert built == cls(**{n: WIRE[n] if n != "raw" else WIRE for n in names}), cls
        assert built.raw is WIRE
