#!/usr/bin/env python3
"""Build ``dist/runnerkeep.pyz``: the CLI and the core as one stdlib-only file for runner hosts.

The archive is byte-for-byte reproducible (sorted members, fixed timestamps), and the output
file is only replaced when its content changes, so the provisioning play stays idempotent.
Prints "changed PATH" or "unchanged PATH".

Every module also ships as bytecode for the building Python (hash-based, checked against the
source in the archive): zipimport never writes bytecode, so without it every run on a host
compiles what it imports (~0.2 s of each hook's and restore's start). A host whose Python has
another version ignores bytecode with the wrong magic number and compiles the source.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import marshal
import os
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {
    "runnerkeep": os.path.join(ROOT, "module_utils", "runnerkeep"),
    "runnerkeep_cli": os.path.join(ROOT, "cli", "runnerkeep_cli"),
}
MAIN = b"import sys\nfrom runnerkeep_cli.main import main\nsys.exit(main())\n"
SHEBANG = b"#!/usr/bin/env python3\n"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def bytecode(arcname: str, source: bytes) -> bytes:
    """A checked hash-based .pyc (PEP 552): valid exactly while the source is the same."""
    code = compile(source, arcname, "exec", dont_inherit=True)
    flags = (0b11).to_bytes(4, "little")  # hash-based, check the source hash
    return (
        importlib.util.MAGIC_NUMBER
        + flags
        + importlib.util.source_hash(source)
        + marshal.dumps(code)
    )


def build_archive() -> bytes:
    members: list[tuple[str, bytes]] = [("__main__.py", MAIN)]
    for package, directory in SOURCES.items():
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py") or name.endswith(".json"):
                    full = os.path.join(dirpath, name)
                    arcname = os.path.join(package, os.path.relpath(full, directory))
                    with open(full, "rb") as handle:
                        data = handle.read()
                    members.append((arcname, data))
                    if name.endswith(".py"):
                        members.append((arcname + "c", bytecode(arcname, data)))
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname, data in sorted(members):
            info = zipfile.ZipInfo(arcname, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=os.path.join(ROOT, "dist", "runnerkeep.pyz"))
    args = parser.parse_args()
    data = build_archive()
    try:
        with open(args.output, "rb") as handle:
            if handle.read() == data:
                print(f"unchanged {args.output}")
                return 0
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, args.output)
    print(f"changed {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
