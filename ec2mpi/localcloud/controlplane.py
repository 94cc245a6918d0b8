"""The local cloud's AWS control plane: moto's server, run as its own process.

CONTRACT: `start(state_dir, host)` returns a running ControlPlane whose `endpoint`
(HTTPS, verified with `ca_path`) and `http_endpoint` (plain HTTP, for proving the
TLS-only bucket policy) serve the same moto backends. `python -m
ec2mpi.localcloud.controlplane --host H --state-dir D` serves until SIGTERM and writes
D/controlplane.json once ready.
(First cut: plain HTTP only; TLS and fidelity patches come with the control-plane work.)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class ControlPlaneInfo:
    endpoint: str        # the endpoint clients use (HTTPS once TLS lands)
    http_endpoint: str   # plain HTTP, same backends
    ca_path: str | None  # CA bundle that verifies `endpoint`, or None for plain HTTP
    pid: int


class ControlPlane:
    def __init__(self, proc: subprocess.Popen, info: ControlPlaneInfo):
        self.proc, self.info = proc, info

    @property
    def endpoint(self) -> str:
        return self.info.endpoint

    @property
    def http_endpoint(self) -> str:
        return self.info.http_endpoint

    @property
    def ca_path(self) -> str | None:
        return self.info.ca_path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(state_dir: str | os.PathLike, host: str = "127.0.0.1", timeout: float = 30.0) -> ControlPlane:
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    info_path = state / "controlplane.json"
    info_path.unlink(missing_ok=True)
    log = open(state / "controlplane.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "ec2mpi.localcloud.controlplane", "--host", host,
                             "--state-dir", str(state)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"control plane exited ({proc.returncode}); see {state / 'controlplane.log'}")
        if info_path.exists():
            return ControlPlane(proc, ControlPlaneInfo(**json.loads(info_path.read_text())))
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"control plane did not start in {timeout:.0f}s; see {state / 'controlplane.log'}")


def serve(host: str, state_dir: Path) -> None:
    from moto.server import ThreadedMotoServer
    port = _free_port(host)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    url = f"http://{host}:{port}"
    info = ControlPlaneInfo(endpoint=url, http_endpoint=url, ca_path=None, pid=os.getpid())
    tmp = state_dir / "controlplane.json.tmp"
    tmp.write_text(json.dumps(asdict(info)))
    tmp.rename(state_dir / "controlplane.json")
    signal.signal(signal.SIGTERM, lambda *_: (server.stop(), sys.exit(0)))
    while True:
        time.sleep(3600)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--state-dir", required=True, type=Path)
    args = ap.parse_args(argv)
    serve(args.host, args.state_dir)


if __name__ == "__main__":
    main()
