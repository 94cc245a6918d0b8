"""The caller's public IPv4 address, from AWS's own check-IP service, for --ssh-cidr.

Why: the security group opens SSH to the user's address only; typing it is error-prone,
and 0.0.0.0/0 is never an acceptable fallback. One short HTTPS request (3 s); the URL is
a setting (EC2MPI_CHECKIP_URL) so tests point it at a local stub.
"""
from __future__ import annotations

import ipaddress
import os
import urllib.request

DEFAULT_URL = "https://checkip.amazonaws.com/"
TIMEOUT = 3.0
# Where SSH from the user can never come from across the internet.
NOT_PUBLIC = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "240.0.0.0/4")]


def checkip_url() -> str:
    return os.environ.get("EC2MPI_CHECKIP_URL") or DEFAULT_URL


def public_ipv4(url: str | None = None, timeout: float = TIMEOUT) -> str:
    """The address the service sees us at; raises OSError or ValueError when it cannot tell."""
    with urllib.request.urlopen(url or checkip_url(), timeout=timeout) as resp:
        text = resp.read(64).decode("ascii", "replace").strip()
    address = ipaddress.ip_address(text)
    if address.version != 4 or any(address in net for net in NOT_PUBLIC) or address.is_multicast:
        raise ValueError(f"not a public IPv4 address: {text!r}")
    return str(address)
