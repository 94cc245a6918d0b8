"""The local cloud's ports belong to root and the nodes: host firewall rules, as a VPC would.

The control plane (moto over TLS and plain HTTP) and the metadata emulator listen on the
bridge's gateway address. Without rules, any user on the host could call them, and anyone
who can route to that address could too. Two chains, jumped to from INPUT and OUTPUT for that
address:
- INPUT: to those ports only over loopback or the bridge (the host and the nodes);
- OUTPUT: from the host to those ports only as root (the user running ec2mpi --local).
Node processes are in their own network namespaces, so these rules never see them: on a node,
user-data firewalls the metadata service to root (bootstrap/userdata.sh.tmpl) and the
control plane accepts only signed requests by known keys (enforce.py).
"""
from __future__ import annotations

import shutil
import subprocess
from urllib.parse import urlsplit

from ..errors import CloudError
from . import nodes

CHAINS = {"INPUT": "EC2MPI-LOCAL-IN", "OUTPUT": "EC2MPI-LOCAL-OUT"}


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = shutil.which("iptables") or "/usr/sbin/iptables"
    return subprocess.run([exe, "-w", *args], capture_output=True, text=True, check=check)


def close(address: str, urls: list[str]) -> None:
    """Rules for the ports in `urls` on `address`; replaces any left by an earlier run."""
    ports = ",".join(sorted({str(urlsplit(u).port) for u in urls}))
    to_ports = ["-p", "tcp", "-m", "multiport", "--dports", ports]
    open_again()
    try:
        incoming, outgoing = CHAINS["INPUT"], CHAINS["OUTPUT"]
        for chain in CHAINS.values():
            _iptables("-N", chain)
        _iptables("-A", incoming, "-i", "lo", "-j", "RETURN")
        _iptables("-A", incoming, "-i", nodes.BRIDGE, "-j", "RETURN")
        _iptables("-A", incoming, *to_ports, "-j", "DROP")
        _iptables("-A", outgoing, *to_ports, "-m", "owner", "!", "--uid-owner", "0",
                  "-j", "REJECT", "--reject-with", "tcp-reset")
        for hook, chain in CHAINS.items():
            _iptables("-I", hook, "-d", address, "-j", chain)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        raise CloudError(f"could not firewall the local cloud's ports: {detail.strip()}",
                         "the local cloud needs iptables with the owner and multiport matches "
                         "(apt-get install iptables)") from err


def open_again() -> None:
    """Remove the chains and their jumps (idempotent: nothing to remove is fine)."""
    for hook, chain in CHAINS.items():
        for rule in _iptables("-S", hook, check=False).stdout.splitlines():
            if rule.endswith(f"-j {chain}"):
                _iptables("-D", *rule.split()[1:], check=False)
        _iptables("-F", chain, check=False)
        _iptables("-X", chain, check=False)


def rules() -> list[str]:
    """Both chains as iptables -S prints them ([] when absent): for status and tests."""
    out = []
    for chain in CHAINS.values():
        result = _iptables("-S", chain, check=False)
        out += result.stdout.splitlines() if result.returncode == 0 else []
    return out
