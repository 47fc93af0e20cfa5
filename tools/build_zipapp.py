#!/usr/bin/env python3
"""Build ``dist/runnerkeep.pyz``: the CLI and the core as one stdlib-only file for runner hosts.

The archive holds sources only and is byte-for-byte the same whichever Python 3.9+ builds it
(sorted members, fixed timestamps and modes, no bytecode: a .pyc depends on the building
Python's version and, before 3.11, on set order in marshalled constants). The output file is
only replaced when its content changes, so the provisioning play stays idempotent.
Prints "changed PATH" or "unchanged PATH".

Hosts do not run the archive itself: the runner_base role unpacks it and compiles it with the
host's own Python (roles/runner_base/files/install_zipapp.py), because zipimport never writes
bytecode and every start would otherwise compile what it imports. Run directly
(``python3 runnerkeep.pyz``) it still works, compiling on each start.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {
    "runnerkeep": os.path.join(ROOT, "module_utils", "runnerkeep"),
    "runnerkeep_cli": os.path.join(ROOT, "cli", "runnerkeep_cli"),
}
# The real path goes first on sys.path so a process keeps importing from the release directory
# it started in, even when a later install flips the `lib` symlink to a new one.
MAIN = (
    b"import os\n"
    b"import sys\n"
    b"sys.path[0] = os.path.realpath(sys.path[0])\n"
    b"from runnerkeep_cli.main import main\n"
    b"sys.exit(main())\n"
)
SHEBANG = b"#!/usr/bin/env python3\n"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)
SHIPPED_SUFFIXES = (".py", ".json")


def source_members() -> list[tuple[str, bytes]]:
    """(name in the archive, content) of every shipped source file, sorted by name."""
    members: list[tuple[str, bytes]] = [("__main__.py", MAIN)]
    for package, directory in SOURCES.items():
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(SHIPPED_SUFFIXES):
                    full = os.path.join(dirpath, name)
                    relative = os.path.relpath(full, directory).replace(os.sep, "/")
                    with open(full, "rb") as handle:
                        members.append((f"{package}/{relative}", handle.read()))
    return sorted(members)


def build_archive() -> bytes:
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname, data in source_members():
            info = zipfile.ZipInfo(arcname, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.create_system = 3  # Unix, whatever the building OS
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=9)
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
