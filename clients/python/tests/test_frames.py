"""The client's message framing (pure: no worker)."""

import json

from zeroboot._conn import Frames


def frame(msg, headers=b""):
    body = json.dumps(msg).encode()
    return headers + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_messages_come_out_whole_whatever_the_pieces():
    a, b = {"id": 1, "result": {"text": "é"}}, {"jsonrpc": "2.0", "method": "sandbox.output", "params": {}}
    stream = frame(a) + frame(b) + frame(a)
    for cut in range(1, len(stream)):
        f = Frames()
        assert f.feed(stream[:cut]) + f.feed(stream[cut:]) == [a, b, a], cut
    f = Frames()
    assert [m for byte in range(len(stream)) for m in f.feed(stream[byte : byte + 1])] == [a, b, a]


def test_other_headers_and_any_case_are_accepted():
    msg = {"id": 7, "result": None}
    body = json.dumps(msg).encode()
    assert Frames().feed(b"Content-Type: application/json\r\ncontent-LENGTH:  %d\r\n\r\n" % len(body) + body) == [msg]


def test_a_frame_without_length_is_an_error():
    try:
        Frames().feed(b"Content-Type: x\r\n\r\n{}")
    except ValueError:
        return
    raise AssertionError("no error")


def test_a_large_message_in_many_pieces():
    big = frame({"id": 2, "result": "x" * (8 << 20)}) + frame({"id": 3, "result": 0})
    f = Frames()
    out = [m for i in range(0, len(big), 1 << 16) for m in f.feed(big[i : i + (1 << 16)])]
    assert [m["id"] for m in out] == [2, 3] and len(out[0]["result"]) == 8 << 20


def test_a_body_is_one_json_value_with_whitespace_around_it_allowed():
    for body, value in [(b'{"id":1}', {"id": 1}), (b' \r\n{"id":1} \n', {"id": 1}), (b"[1,2]", [1, 2])]:
        assert Frames().feed(b"Content-Length: %d\r\n\r\n" % len(body) + body) == [value], body
    for body in [b"", b"   ", b'{"id":1} {"id":2}', b'{"id":', b"nul"]:
        try:
            Frames().feed(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        except ValueError:
            continue
        raise AssertionError(f"{body!r} was accepted")


def test_messages_are_encoded_as_the_json_module_encodes_them():
    from zeroboot._conn import _encode

    for value in [{"jsonrpc": "2.0", "id": 1, "method": "sandbox.run", "params": {"argv": ["echo", "h\u00e9\n\"x\""]}},
                  [1, 2.5, -0.0, 10**30, None, True, False, {}], {"nested": {"a": [{"b": []}]}}, "\U0001f600"]:
        assert _encode(value) == json.dumps(value, separators=(",", ":")), value
    for bad in [{"s": {1}}, {1.5j: 0}, [object()]]:
        try:
            _encode(bad)
        except TypeError:
            continue
        raise AssertionError(f"{bad!r} was encoded")
