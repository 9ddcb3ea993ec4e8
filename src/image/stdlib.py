# The minimal profile's standard library, chosen and checked by the staged
# interpreter itself (python.rs runs it as `python3.11 -I -B stdlib.py ...`:
# isolated from the environment, writing no __pycache__ into the tree).
#
#   pack OUT NAME...  imports every NAME, then writes each pure-Python module
#                     of the standard library that is now loaded (the
#                     interpreter's startup modules, the NAMEs and everything
#                     they import) into the zip OUT as a sourceless .pyc:
#                     optimize=2 (no docstrings, no asserts), unchecked-hash
#                     (never compared with a source), the guest's path as its
#                     file name, and fixed timestamps (reproducible).
#   check NAME...     imports every NAME and checks that every loaded module
#                     came from the staged tree, not from the host's Python.
#
# Either mode exits 1, naming the culprits, if a NAME does not import.
import os
import sys

MODE = sys.argv[1]
NAMES = sys.argv[3:] if MODE == "pack" else sys.argv[2:]
failed = []
for name in NAMES:
    try:
        __import__(name)
    except Exception as e:
        failed.append("%s (%s)" % (name, e))
if failed:
    sys.exit("cannot import: " + ", ".join(failed))
# Taken before this script imports anything more for itself.
LOADED = sorted({
    m.__file__
    for name, m in list(sys.modules.items())
    if name != "__main__" and getattr(m, "__file__", None)
})


def pack(out):
    import importlib.util
    import marshal
    import zipfile

    stdlib = os.path.dirname(os.__file__)
    guest = "/usr/lib/python%d.%d" % sys.version_info[:2]
    with zipfile.ZipFile(out, "w") as z:
        for path in LOADED:
            if not path.startswith(stdlib + os.sep) or not path.endswith(".py"):
                continue  # extension modules stay in lib-dynload
            rel = os.path.relpath(path, stdlib)
            with open(path, "rb") as f:
                source = f.read()
            code = compile(source, os.path.join(guest, rel), "exec", dont_inherit=True, optimize=2)
            # PEP 552 header: magic, flags (hash-based, unchecked), source hash.
            pyc = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")
            pyc += importlib.util.source_hash(source) + marshal.dumps(code)
            info = zipfile.ZipInfo(rel + "c", (1980, 1, 1, 0, 0, 0))
            z.writestr(info, pyc, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def check():
    usr = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
    strays = [p for p in LOADED if not p.startswith(usr + os.sep)]
    if strays:
        sys.exit("modules loaded from outside %s: %s" % (usr, ", ".join(strays)))


if MODE == "pack":
    pack(sys.argv[2])
else:
    check()
