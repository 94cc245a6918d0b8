"""Build a wheel of the ec2mpi that is running right now, with zipfile only.

Why: nodes must run exactly the client's code (same registry schema, same agent), and
the client may be an editable checkout with no build tools at run time. The wheel is
pure Python, so one file serves every node architecture.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import zipfile
from pathlib import Path

import ec2mpi

DIST = "ec2mpi"
CONSOLE_SCRIPTS = {"ec2mpi": "ec2mpi.cli:main", "ec2mpi-agent": "ec2mpi.agent.main:main"}
REQUIRES = ("boto3>=1.28", "paramiko>=3.0", "cryptography>=41", "prompt_toolkit>=3.0.36")
_SKIP_DIRS = {"__pycache__", ".pytest_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".swp", "~")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same tree gives the same bytes


def wheel_name(version: str | None = None) -> str:
    return f"{DIST}-{version or ec2mpi.__version__}-py3-none-any.whl"


def _package_files(root: Path):
    """(archive path, file path) for every file of the package; follows symlinked dirs
    (bootstrap/)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for fname in sorted(filenames):
            if fname.endswith(_SKIP_SUFFIXES) or fname.startswith("."):
                continue
            path = Path(dirpath) / fname
            rel = path.relative_to(root.parent).as_posix()
            yield rel, path


def _hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest},{len(data)}"


def build() -> tuple[str, bytes]:
    """Return (file name, wheel bytes) for the installed ec2mpi package."""
    version = ec2mpi.__version__
    root = Path(ec2mpi.__file__).resolve().parent
    distinfo = f"{DIST}-{version}.dist-info"
    meta = {
        "METADATA": "Metadata-Version: 2.1\nName: ec2mpi\nVersion: " + version + "\n"
        "Summary: MPI clusters on EC2 spot instances in one command\nRequires-Python: >=3.9\n"
        + "".join(f"Requires-Dist: {r}\n" for r in REQUIRES),
        "WHEEL": "Wheel-Version: 1.0\nGenerator: ec2mpi.selfwheel\nRoot-Is-Purelib: true\nTag: "
                 "py3-none-any\n",
        "entry_points.txt": "[console_scripts]\n"
        + "".join(f"{k} = {v}\n" for k, v in CONSOLE_SCRIPTS.items()),
        "top_level.txt": "ec2mpi\n",
    }
    buf, record = io.BytesIO(), []

    def add(arcname: str, data: bytes, mode: int = 0o644) -> None:
        info = zipfile.ZipInfo(arcname, _EPOCH)
        info.external_attr = (0o100000 | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, data)
        record.append(f"{arcname},{_hash(data)}")

    with zipfile.ZipFile(buf, "w") as zf:
        for arcname, path in _package_files(root):
            add(arcname, path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644)
        for fname, text in meta.items():
            add(f"{distinfo}/{fname}", text.encode())
        record.append(f"{distinfo}/RECORD,,")
        info = zipfile.ZipInfo(f"{distinfo}/RECORD", _EPOCH)
        info.external_attr = 0o100644 << 16
        zf.writestr(info, "\n".join(record) + "\n")
    return wheel_name(version), buf.getvalue()
