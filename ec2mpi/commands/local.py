"""The handler of the local cloud: up, down, status and its faults (interrupt, kill, slow)."""
from __future__ import annotations

import re

from .. import output
from ..errors import UserError
from .context import Result


def cmd_local(ctx, a) -> Result:
    from ..localcloud import control
    if a.action == "capacity":
        return _capacity(control, a)
    if a.action in ("interrupt", "kill", "slow") and not a.instance_id:
        raise UserError(
            f"local {a.action} needs an instance id",
            f"e.g. ec2mpi local {a.action} i-0123456789abcdef0",
        )
    if a.action == "interrupt" and not 0 <= a.grace <= 3600:
        raise UserError(f"--grace {a.grace:g}: the notice's grace must be 0 to 3600 seconds",
                        "AWS gives 120 s; the local cloud's default is 20")
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
        control.interrupt(a.instance_id, grace=a.grace)
        return Result({"interrupted": a.instance_id, "grace": a.grace},
                      f"spot interruption notice sent to {a.instance_id}; terminated in "
                      f"{a.grace:g} s")
    if a.action == "slow":
        off = bool(getattr(a, "off", False))
        control.slow(a.instance_id, off=off)
        return Result({"slow": a.instance_id, "off": off},
                      f"{a.instance_id}: full link again" if off else
                      f"{a.instance_id}: link slowed ({control.SLOW_LINK}); undo with: ec2mpi "
                      f"--local local slow {a.instance_id} --off")
    control.kill(a.instance_id)
    return Result({"killed": a.instance_id}, f"{a.instance_id} killed")


def parse_pool(where: str, count: str | None, lifecycle: str | None) -> dict:
    """'c6i.large@us-east-1a', '3' or 'unlimited' -> the capacity endpoint's pool."""
    from ..config import parse_instance_types
    itype, _, az = (where or "").partition("@")
    if not itype or count is None:
        raise UserError("local capacity needs TYPE[@AZ] and COUNT",
                        "e.g. ec2mpi --local local capacity c6i.large@us-east-1a 0 --spot")
    parse_instance_types(itype)
    if az and not re.match(r"^[a-z]{2}(-[a-z0-9]+)+[a-z]$", az):
        raise UserError(f"availability zone {az!r} is not a zone name", "e.g. us-east-1a")
    text = count.strip().lower()
    if text in ("unlimited", "inf", "-"):
        n = None
    elif text.isdigit():
        n = int(text)
    else:
        raise UserError(f"capacity count {count!r} is not a number",
                        "give a whole number (0 or more) or 'unlimited'")
    return {"type": itype, "az": az or None, "lifecycle": lifecycle, "count": n}


def _capacity(control, a) -> Result:
    """`local capacity` lists the pools; `local capacity TYPE[@AZ] COUNT` sets one."""
    if a.instance_id is None and a.count is None and not getattr(a, "lifecycle", None):
        pools = control.capacity()
        if pools is None:
            return Result({"up": False, "pools": []},
                          "local cloud is down (start it with: ec2mpi local up)")
    else:
        pool = parse_pool(a.instance_id, a.count, getattr(a, "lifecycle", None))
        pools = control.capacity(pool)
    if not pools:
        return Result({"pools": []}, "capacity: unlimited in every pool (EC2 as moto has it)")
    rows = [[p["type"], p["az"] or "any", p["lifecycle"] or "any", p["count"]] for p in pools]
    return Result({"pools": pools}, "capacity pools (instances still to launch; any other "
                  "pool is unlimited)\n" + output.table(["TYPE", "AZ", "LIFECYCLE", "LEFT"],
                                                          rows))

