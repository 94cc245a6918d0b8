"""Who may call the local cloud's control plane, with which secret: the client (root on the
host) and each node's instance role, as AWS would have it.

moto accepts any credentials, so on its own the local cloud would let anyone on the host, or
any process on a node, act as an account administrator. The daemon therefore makes a secret
client key pair (root-only file) and, per instance, role credentials that the metadata
emulator serves to that instance alone (root on the node: user-data firewalls the rest).
The control plane verifies every request's SigV4 signature against this store and
authorizes node requests with the role's own policies (enforce.py).
"""
from __future__ import annotations

import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "credentials.json"


@dataclass(frozen=True)
class Key:
    access_key_id: str
    secret: str
    token: str = ""
    instance_id: str = ""     # node keys: the instance, its role's name and id
    role: str = ""
    role_id: str = ""

    @property
    def userid(self) -> str:
        """IAM's aws:userid for instance-role credentials: role id : instance id."""
        return f"{self.role_id}:{self.instance_id}"


def _new(prefix: str) -> tuple[str, str]:
    return prefix + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)


class CredentialStore:
    """The credentials file in the control plane's state dir (0600, root only)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / FILE
        self._lock = threading.Lock()
        self._writing = threading.RLock()   # read-modify-write of the file, one at a time
        self._cache: tuple[float, dict] = (-1.0, {})

    def load(self) -> dict:
        """{"client": Key, "nodes": {akid: Key}}, re-read when the file changed."""
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                return {"client": None, "nodes": {}}
            if mtime != self._cache[0]:
                raw = json.loads(self.path.read_text())
                self._cache = (mtime, {
                    "client": Key(**raw["client"]) if raw.get("client") else None,
                    "nodes": {k: Key(**v) for k, v in raw.get("nodes", {}).items()}})
            return self._cache[1]

    def find(self, access_key_id: str) -> Key | None:
        data = self.load()
        client = data["client"]
        if client is not None and client.access_key_id == access_key_id:
            return client
        return data["nodes"].get(access_key_id)

    def client(self) -> Key:
        """The client's key pair, made on first use."""
        with self._writing:
            key = self.load()["client"]
            if key is None:
                key = Key(*_new("AKIALOCAL"))
                self._save(client=key)
            return key

    def issue(self, instance_id: str, role: str, role_id: str) -> Key:
        """Role credentials for one instance (the same ones again if it has some)."""
        with self._writing:
            for key in self.load()["nodes"].values():
                if key.instance_id == instance_id and key.role == role:
                    return key
            akid, secret = _new("ASIALOCAL")
            key = Key(akid, secret, secrets.token_urlsafe(40), instance_id, role, role_id)
            self._save(node=key)
            return key

    def revoke(self, instance_id: str) -> None:
        with self._writing:
            data = self.load()
            nodes = {k: v for k, v in data["nodes"].items() if v.instance_id != instance_id}
            self._write({"client": data["client"], "nodes": nodes})

    def forget_nodes(self) -> None:
        """After a local cloud stopped: its instances are gone, so are their credentials."""
        with self._writing:
            data = self.load()
            if data["nodes"]:
                self._write({"client": data["client"], "nodes": {}})

    def _save(self, client: Key | None = None, node: Key | None = None) -> None:
        data = self.load()
        nodes = dict(data["nodes"])
        if node is not None:
            nodes[node.access_key_id] = node
        self._write({"client": client or data["client"], "nodes": nodes})

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"client": asdict(data["client"]) if data["client"] else None,
                       "nodes": {k: asdict(v) for k, v in data["nodes"].items()}}, fh)
        os.replace(tmp, self.path)
