# The README's example, verbatim except for the sys.path line (tests/test_readme.py keeps them equal).
import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import asyncio, threading
from zeroboot import Zeroboot, AsyncZeroboot, CancelToken, ExecTimeoutError, RequestCancelledError

# synchronous
with Zeroboot.start() as zb:                      # binary: binary=, $ZEROBOOT_BIN, next to the package, ../../target/release, PATH
    t = zb.load_template(builtin="bare")
    with zb.fork(t) as sb:                        # killed when the block ends
        r = sb.exec(["echo", "hi"], timeout_ms=5000, env={"A": "1"}, cwd="/", stdin="")
        print(r.stdout, r.exit_code, r.timed_out, r.duration_us)
        sb.exec(["flood", "1000"], on_output=lambda c: print(c.stream, len(c.data)))   # streaming callback
        s = sb.stream(["echo", "streamed"])                                            # streaming iterator
        for chunk in s:
            print(chunk.stream, chunk.data)
        print(s.result.exit_code)
        tok = CancelToken()                       # cancel from another thread: sends $/cancelRequest
        threading.Timer(0.1, tok.cancel).start()
        try:
            sb.exec(["spin"], cancel=tok)
        except RequestCancelledError:
            print("cancelled")
    sb2 = zb.fork(t)
    try:
        sb2.exec(["spin"], timeout_ms=200)
    except ExecTimeoutError as e:
        print("timed out:", e.data)
# leaving the block kills this client's sandboxes and shuts the worker down

# asyncio
async def main():
    async with await AsyncZeroboot.start() as zb:
        t = await zb.load_template(builtin="bare")
        async with await zb.fork(t) as sb:
            print((await sb.exec(["echo", "hi"])).stdout)
            s = sb.stream(["echo", "streamed"])
            async for chunk in s:
                print(chunk.data)
            # cancelling the task of a call sends $/cancelRequest
            task = asyncio.ensure_future(sb.exec(["spin"]))
            await asyncio.sleep(0.1)
            task.cancel()

asyncio.run(main())
