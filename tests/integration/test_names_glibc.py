"""The local VPC resolver through the real glibc stub resolver, as a node would use it.

A child process in fresh network, UTS and mount namespaces plays one node: `lo` up, the
NameServer on 127.0.0.2:53, our resolv.conf bind-mounted over /etc/resolv.conf (private
propagation, so the host's /etc never changes) and the hostname `ip-10-1-2-3`. Then getent
and Python's getaddrinfo must resolve the node's names (what MPI needs), and unknown names
must fail fast instead of stalling on timeouts.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _why_not() -> str:
    if os.geteuid() != 0:
        return "needs root: network/UTS/mount namespaces, port 53 and a bind mount"
    for tool in ("unshare", "ip", "getent", "mount"):
        if shutil.which(tool) is None:
            return f"needs '{tool}' (apt-get install util-linux iproute2 libc-bin mount)"
    if not os.path.exists("/etc/resolv.conf"):
        return "needs an existing /etc/resolv.conf to bind-mount over"
    probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True,
                           check=False)
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.decode().strip()}"
    return ""


_WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(bool(_WHY_NOT), reason=_WHY_NOT or "n/a")

NODE = r'''
import json, os, socket, subprocess, sys, time
from ec2mpi.localcloud.names import NameServer, resolv_conf

tmp = sys.argv[1]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # 127.0.0.0/8 is then all local
server = NameServer("127.0.0.2", 53, lambda ip: ip == "10.1.2.3", "us-east-1").start()
for name, text in (("resolv.conf", resolv_conf("127.0.0.2", "us-east-1")),
                   ("nsswitch.conf", "hosts: files dns\n")):
    if name == "nsswitch.conf" and not os.path.exists("/etc/nsswitch.conf"):
        continue  # glibc's built-in default already consults dns
    with open(os.path.join(tmp, name), "w") as f:
        f.write(text)
    subprocess.run(["mount", "--bind", os.path.join(tmp, name), "/etc/" + name], check=True)
socket.sethostname("ip-10-1-2-3")

def timed(fn):
    started = time.monotonic()
    try:
        value = fn()
    except Exception as e:
        value = "error: " + repr(e)
    return {"value": value, "seconds": round(time.monotonic() - started, 3)}

def getent(*args):
    p = subprocess.run(["getent", *args], capture_output=True, text=True, timeout=10)
    return [p.returncode, p.stdout.split()]

def gai(name):
    return sorted({ai[4][0] for ai in socket.getaddrinfo(name, 22, type=socket.SOCK_STREAM)})

out = {
    "resolv.conf": open("/etc/resolv.conf").read(),
    "getent short": timed(lambda: getent("hosts", "ip-10-1-2-3")),
    "getent fqdn": timed(lambda: getent("hosts", "ip-10-1-2-3.ec2.internal")),
    "getent ptr": timed(lambda: getent("hosts", "10.1.2.3")),
    "getent dead": timed(lambda: getent("hosts", "ip-10-9-9-9")),
    "getent outside": timed(lambda: getent("hosts", "pypi.org")),
    "gai short": timed(lambda: gai("ip-10-1-2-3")),
    "gai gethostname": timed(lambda: gai(socket.gethostname())),
    "getfqdn": timed(socket.getfqdn),
    "gai dead": timed(lambda: gai("ip-10-9-9-9")),
    "gai outside": timed(lambda: gai("pypi.org")),
}
server.stop()
print(json.dumps(out))
'''


def test_glibc_resolves_node_names_through_the_vpc_resolver(tmp_path):
    before = Path("/etc/resolv.conf").read_bytes()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        ["unshare", "--net", "--uts", "--mount", "--propagation", "private",
         sys.executable, "-c", NODE, str(tmp_path)],
        capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert "nameserver 127.0.0.2" in r["resolv.conf"] and "search ec2.internal" in r["resolv.conf"]

    assert r["getent short"]["value"] == [0, ["10.1.2.3", "ip-10-1-2-3.ec2.internal"]], r
    assert r["getent fqdn"]["value"] == [0, ["10.1.2.3", "ip-10-1-2-3.ec2.internal"]], r
    assert r["getent ptr"]["value"] == [0, ["10.1.2.3", "ip-10-1-2-3.ec2.internal"]], r
    assert r["gai short"]["value"] == ["10.1.2.3"], r
    assert r["gai gethostname"]["value"] == ["10.1.2.3"], r  # the call MPI makes
    assert r["getfqdn"]["value"] == "ip-10-1-2-3.ec2.internal", r

    assert r["getent dead"]["value"] == [2, []], r      # 2: not found
    assert r["getent outside"]["value"] == [2, []], r
    assert "gaierror(-2," in r["gai dead"]["value"], r   # EAI_NONAME: NXDOMAIN everywhere
    assert "gaierror(-3," in r["gai outside"]["value"], r  # EAI_AGAIN: REFUSED, never forwarded
    for check, result in r.items():
        if isinstance(result, dict):
            assert result["seconds"] < 1.0, f"{check} took {result['seconds']}s: {result}"

    assert Path("/etc/resolv.conf").read_bytes() == before  # the host never saw the mount
