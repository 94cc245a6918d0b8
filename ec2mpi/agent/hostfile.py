"""MPI hostfiles from registry nodes: Open MPI (`IP slots=N`) and MPICH (`IP:N`).

Master first (mpirun puts rank 0 there), ready nodes only (booting ones cannot take
ranks yet, draining ones are about to vanish), written atomically so a concurrent
mpirun never reads half a file.

The agent that writes them is root, and the shared directory belongs to the cluster user:
every write goes through safefiles.write_files, which writes as root only where root alone
controls the path and as the user in control elsewhere (so a symlink planted at
SHARED/.ec2mpi cannot aim root's write at, say, /etc/sudoers.d).
"""
from __future__ import annotations

import logging
from pathlib import Path

from .safefiles import write_files

log = logging.getLogger("ec2mpi.agent.hostfile")

OPENMPI_NAME = "hostfile"
MPICH_NAME = "hostfile.mpich"


def ordered(nodes) -> list:
    """Ready nodes whose items can be trusted, master first, then by private IP (numerically)
    for a stable order. Nodes write their own items: an item with a problem never reaches a
    hostfile."""
    ready = [n for n in nodes if n.state == "ready" and not getattr(n, "problem", "")]

    def key(n):
        try:
            ip = tuple(int(p) for p in n.private_ip.split("."))
        except ValueError:
            ip = (999,)
        return (n.role != "master", ip, n.instance_id)
    return sorted(ready, key=key)


def render_openmpi(nodes) -> str:
    return "".join(f"{n.private_ip} slots={int(n.slots)}\n" for n in ordered(nodes))


def render_mpich(nodes) -> str:
    return "".join(f"{n.private_ip}:{int(n.slots)}\n" for n in ordered(nodes))


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a sibling temp file, then rename over the target (atomic on one filesystem);
    as root only where no other user controls the directory (safefiles)."""
    path = Path(path)
    write_files(path.parent, {path.name: text}, mode)


def write_hostfiles(nodes, directories) -> str:
    """Write both formats into every directory; returns the Open MPI text. A directory
    that cannot be written (shared storage gone) is skipped: /etc/ec2mpi is the one that counts."""
    openmpi, mpich = render_openmpi(nodes), render_mpich(nodes)
    for i, d in enumerate(directories):
        try:  # MPICH's first: the Open MPI file (the one most readers wait for) completes the pair
            for note in write_files(Path(d), {MPICH_NAME: mpich, OPENMPI_NAME: openmpi}):
                log.warning("%s", note)
        except OSError as err:
            if i == 0:
                raise
            log.warning("hostfile copy in %s skipped: %s", d, err)
    return openmpi
