"""The package index a stock-image node installs from: the host's wheelhouse, served
read-only over HTTP on the bridge (nodes reach nothing else). It stands in for PyPI behind a
NAT gateway; pip finds it through PIP_FIND_LINKS with PIP_NO_INDEX set in the node's
environment (env_for), so user-data's plain `pip install` runs unchanged.
"""
from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

from .imds import BusyHTTPServer


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:   # no line per wheel in the daemon's log
        pass


class PackageIndex:
    """A directory listing of `directory` (pip's find-links format) on host:port."""

    def __init__(self, host: str, directory: Path, port: int = 0):
        handler = functools.partial(_Quiet, directory=str(directory))
        self._httpd = BusyHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> PackageIndex:
        threading.Thread(target=self._httpd.serve_forever, name="pkgindex", daemon=True).start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def env_for(self) -> dict[str, str]:
        """What makes a node's pip use this index and nothing else."""
        host = self._httpd.server_address[0]
        return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": self.url, "PIP_TRUSTED_HOST": host,
                "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


# The distribution's package managers on a node: local nodes share the host's /usr and
# package database, so none may install anything. This stub stands in for dnf (the stock
# image is Amazon Linux 2023, as on AWS): it records what would be installed in the node's
# own log, answers `dnf list --available s3fs-fuse` as AL2023 does (no such package) and
# succeeds otherwise.
PACKAGE_STUB = """#!/bin/sh
# ec2mpi local cloud: a stand-in for the node's package manager (see localcloud/pkgindex.py)
echo "$(date -u +%FT%TZ) $(basename "$0") $*" >> /var/log/ec2mpi/packages.log
case "$1" in
  list) for arg in "$@"; do [ "$arg" = s3fs-fuse ] && exit 1; done ;;
esac
exit 0
"""
STUBBED = ("dnf", "yum", "apt-get", "apt")


def write_package_stubs(directory: Path) -> Path:
    """The stub under every name a bootstrap may call; `directory` goes first in PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for name in STUBBED:
        stub = directory / name
        stub.write_text(PACKAGE_STUB)
        stub.chmod(0o755)
    return directory
