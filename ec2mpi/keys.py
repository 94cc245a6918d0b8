"""Cluster key material, generated on the client with `cryptography`.

A cluster has two ed25519 keys: the user identity (the cluster user logs in between
nodes with it, and the client uses it to reach the master) and ONE host key shared by
all nodes, so a single known_hosts line (`* ssh-ed25519 ...` scoped to the cluster's own
config) verifies every node, present and future, without per-node rewrites.
"""
from __future__ import annotations

from dataclasses import dataclass

# Object names under clusters/NAME/ in the key store.
IDENTITY = "id_ed25519"
IDENTITY_PUB = "id_ed25519.pub"
HOST_KEY = "ssh_host_ed25519_key"
HOST_KEY_PUB = "ssh_host_ed25519_key.pub"
PRIVATE_OBJECTS = (IDENTITY, HOST_KEY)


@dataclass(frozen=True)
class KeyPair:
    private_openssh: bytes
    public_openssh: bytes  # "ssh-ed25519 AAAA... comment\n"

    @classmethod
    def generate(cls, comment: str) -> KeyPair:
        # here only: a booting node reads its keys and never makes one (cryptography's
        # import is ~15 ms of CPU, paid by every node of a create at once)
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return cls(private, public + b" " + comment.encode() + b"\n")


@dataclass(frozen=True)
class ClusterKeys:
    identity: KeyPair
    host: KeyPair

    @classmethod
    def generate(cls, cluster: str) -> ClusterKeys:
        return cls(
            KeyPair.generate(f"ec2mpi-{cluster}"), KeyPair.generate(f"ec2mpi-{cluster}-host")
        )

    def objects(self) -> dict[str, bytes]:
        """Key-store object name -> content."""
        return {IDENTITY: self.identity.private_openssh, IDENTITY_PUB: self.identity.public_openssh,
                HOST_KEY: self.host.private_openssh, HOST_KEY_PUB: self.host.public_openssh}

    @classmethod
    def from_objects(cls, objs: dict[str, bytes]) -> ClusterKeys:
        return cls(
            KeyPair(objs[IDENTITY], objs[IDENTITY_PUB]), KeyPair(objs[HOST_KEY], objs[HOST_KEY_PUB])
        )


def known_hosts_line(host_public: bytes, pattern: str = "*") -> str:
    """One line that trusts the cluster host key for every host matching `pattern`."""
    key_type, key_b64 = host_public.decode().split()[:2]
    return f"{pattern} {key_type} {key_b64}\n"
