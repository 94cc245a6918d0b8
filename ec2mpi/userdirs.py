"""The user's own ec2mpi directory: shell history, last cluster used, user defaults, ssh files.

XDG layout ($XDG_CONFIG_HOME/ec2mpi or ~/.config/ec2mpi); EC2MPI_CONFIG_DIR overrides it
so tests and scripts never touch the real home directory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError

DEFAULTS_FILE = "config.toml"   # [defaults] table: same keys as a cluster template
STATE_FILE = "state.json"       # {"last_cluster": NAME, "images": {REGION: {VERSION: AMI}}}
HISTORY_FILE = "history"


def config_dir() -> Path:
    override = os.environ.get("EC2MPI_CONFIG_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ec2mpi"


def ensure_dir(path: Path | None = None, mode: int = 0o700) -> Path:
    path = path or config_dir()
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path


def history_path() -> Path:
    return ensure_dir() / HISTORY_FILE


def cluster_dir(name: str) -> Path:
    """Where ssh-config keeps a cluster's identity, known_hosts and ssh config."""
    return ensure_dir(ensure_dir() / "clusters" / name)


def _read_state() -> dict:
    try:
        return json.loads((config_dir() / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def last_cluster() -> str | None:
    return _read_state().get("last_cluster")


def remember_cluster(name: str | None) -> None:
    """Remember (or with None, forget) the cluster commands default to."""
    state = _read_state()
    if state.get("last_cluster") == name:
        return
    state["last_cluster"] = name
    _write_state(state)


def _write_state(state: dict) -> None:
    path = ensure_dir() / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def read_toml(path) -> dict:
    """A TOML file as a dict; a missing or broken file is the user's to fix (exit 2)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(
            f"template {str(path)!r} not found",
            "give the path of a TOML file such as examples/cluster.toml",
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(
            f"template {str(path)!r} is not valid TOML: {err}",
            "fix the file (see examples/cluster.toml)",
        ) from None


def user_defaults() -> dict:
    """The [defaults] table of the user's config.toml: the base under templates and flags."""
    path = config_dir() / DEFAULTS_FILE
    if not path.exists():
        return {}
    data = read_toml(path)
    return dict(data.get("defaults", {}))


def default_images(where: str) -> dict:
    """ec2mpi version -> the image `bake-image --default` stored for `where` (a region, or
    'local' for the local cloud)."""
    return dict(_read_state().get("images", {}).get(where, {}))


def remember_image(where: str, version: str, image_id: str) -> None:
    """The default image of `where` for this ec2mpi version (create uses it)."""
    state = _read_state()
    state.setdefault("images", {}).setdefault(where, {})[version] = image_id
    _write_state(state)
