"""The handler of the local cloud: up, down, status and its faults."""
from __future__ import annotations

from .. import output
from ..errors import UserError
from .context import Result


def cmd_local(ctx, a) -> Result:
    from ..localcloud import control
    if a.action in ("interrupt", "kill") and not a.instance_id:
        raise UserError(
            f"local {a.action} needs an instance id",
            f"e.g. ec2mpi local {a.action} i-0123456789abcdef0",
        )
    if a.action == "up":
        bar = ctx.progress("local cloud")
        try:
            info = control.ensure_up(progress=bar)
        finally:
            bar.finish()
        return Result(
            output.to_data(info),
            f"local cloud up: {info.endpoint} (pid {info.pid}, ssh from {info.ssh_cidr})",
        )
    if a.action == "down":
        control.down()
        return Result({"down": True}, "local cloud stopped")
    if a.action == "status":
        st = control.status()
        if st is None:
            return Result({"up": False}, "local cloud is down (start it with: ec2mpi local up)")
        text = "\n".join(
            [
                (f"local cloud is up (pid {st['pid']}, for {st['uptime']:.0f} s): "
                 f"{len(st['nodes'])} node(s) running"),
                f"  control plane  {st['endpoint']}  (CA {st['ca_path']})",
                f"  metadata       {st['imds']}",
                f"  nodes' network {st['ssh_cidr']} on bridge ec2mpi0",
                f"  state          {st['state_dir']}  (stop it all with: ec2mpi local down)",
            ]
        )
        return Result({"up": True, **st}, text)
    if a.action == "interrupt":
        control.interrupt(a.instance_id)
        return Result(
            {"interrupted": a.instance_id}, f"spot interruption notice sent to {a.instance_id}"
        )
    control.kill(a.instance_id)
    return Result({"killed": a.instance_id}, f"{a.instance_id} killed")
