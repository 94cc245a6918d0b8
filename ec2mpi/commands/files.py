"""Handlers that copy files to and from the cluster's shared storage: put, get."""
from __future__ import annotations

import os

from .access import _close, _open
from .context import Result


def cmd_put(ctx, a) -> Result:
    from .. import remote
    name = ctx.cluster_name()
    client, closers, status, _ = _open(ctx, name, None)
    try:
        target = remote.remote_path(
            status.spec.shared_path, a.remote, os.path.basename(a.local.rstrip("/"))
        )
        sent = remote.put(client, a.local, target)
    finally:
        _close(closers)
    return Result({"cluster": name, "local": a.local, "remote": target, "bytes": sent},
                  f"{a.local} -> {name}:{target} ({sent} bytes)")


def cmd_get(ctx, a) -> Result:
    from .. import remote
    name = ctx.cluster_name()
    client, closers, status, _ = _open(ctx, name, None)
    try:
        source = remote.remote_path(status.spec.shared_path, a.remote)
        local = a.local or os.path.basename(source.rstrip("/")) or "."
        got = remote.get(client, source, local)
    finally:
        _close(closers)
    return Result({"cluster": name, "remote": source, "local": local, "bytes": got},
                  f"{name}:{source} -> {local} ({got} bytes)")
