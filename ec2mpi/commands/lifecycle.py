"""Handlers of the cluster lifecycle: create, destroy, list, status, use, cost."""
from __future__ import annotations

import argparse

from .. import output, userdirs
from ..config import ClusterSpec, format_duration, validate_name
from ..errors import Ec2mpiError, UserError
from .context import Context, Result


def spec_from_args(
    args: argparse.Namespace,
    template: dict | None = None,
    defaults: dict | None = None,
    local_info=None,
) -> ClusterSpec:
    """User defaults < template < flags (< the local cloud's fixed region and SSH range)."""
    data: dict = {}
    data.update(defaults or {})
    data.update(template or {})
    flags = {"nodes": args.nodes, "instance_types": args.instance_type, "spot": args.spot,
             "storage": args.storage, "ssh_cidr": args.ssh_cidr, "image_id": args.image,
             "placement_group": args.placement_group, "region": getattr(args, "region", None),
             "keep_size": getattr(args, "keep_size", None),
             "master_spot": getattr(args, "master_spot", None),
             "job_policy_arns": getattr(args, "job_policy_arn", None),
             "spot_fallback": getattr(args, "spot_fallback", None),
             "autostop": getattr(args, "autostop", None)}
    data.update({k: v for k, v in flags.items() if v is not None})
    data["name"] = args.name
    if local_info is not None:
        data["region"] = local_info.region
        data.setdefault("ssh_cidr", local_info.ssh_cidr)
    return ClusterSpec.from_mapping(data)


def _image(ctx, image: str | None, local: bool) -> str | None:
    """--image: an AMI id, or a name. `stock` is the default Amazon Linux 2023 (every install
    step runs at boot); on the local cloud `baked` (the default there) and `stock` are its
    two registered images."""
    if image and image.startswith("ami-"):
        return image
    if not local:
        if image in (None, "stock"):
            return None
        raise UserError(f"--image {image!r} is not an AMI id",
                        "give ami-..., or 'stock' for the latest Amazon Linux 2023")
    from ..localcloud.image import find_image
    return find_image(ctx.aws.client("ec2"), image or "baked")


def read_template(path: str | None) -> dict:
    if not path:
        return {}
    data = userdirs.read_toml(path)
    return dict(data.get("cluster", data))


def cmd_create(ctx: Context, a) -> Result:
    if not a.name:
        if ctx.dialog is None:
            raise UserError("create needs a cluster NAME", "e.g. ec2mpi create demo --nodes 4")
        a = ctx.dialog(ctx, a)
        if a is None:
            return Result(text="create cancelled; nothing was made")
    if getattr(a, "check", False) and a.no_wait:
        raise UserError("create --check needs the nodes ready", "drop --no-wait (or run "
                        "'ec2mpi check' once 'ec2mpi status' shows them ready)")
    template, defaults = read_template(a.template), userdirs.user_defaults()
    region = a.region or template.get("region") or defaults.get("region")
    if region and not a.local:
        a.region = region
    ctx.args = a
    if a.local:
        _ = ctx.aws  # bring the local cloud up first: it fixes the region and the SSH range
    if not a.image and not template.get("image_id") and not defaults.get("image_id"):
        from .images import default_image
        a.image = default_image(ctx)      # bake-image --default, for this ec2mpi version
    a.image = _image(ctx, a.image, bool(a.local))
    spec = spec_from_args(a, template, defaults, ctx.local_info if a.local else None)
    if spec.storage == "none" and spec.autostop and not ctx.confirm(
            f"autostop after {format_duration(spec.autostop)} idle, with --storage none: job "
            "output on the master's disk is lost when the cluster stops. Go on?"):
        return Result(text="create cancelled; nothing was made")
    bar = ctx.progress(f"create {spec.name}")
    try:
        status = ctx.manager(progress=bar).create(spec, wait=not a.no_wait, timeout=a.timeout,
                                                  min_nodes=getattr(a, "min_nodes", None))
    finally:
        bar.finish()
    userdirs.remember_cluster(spec.name)
    text = output.format_status(status) + f"\nssh: open to {status.spec.ssh_cidr} only"
    limit = status.spec.autostop_seconds
    text += (f"\nautostop: after {format_duration(limit)} idle (change it with: ec2mpi "
             f"autostop DURATION|off -c {spec.name})" if limit else
             "\nautostop: off (the cluster runs until you destroy it)")
    if status.notice:
        text = status.notice + "\n" + text
    if status.launch is not None:
        text = f"capacity: {output.format_launch(status.launch)}\n" + text
    if getattr(a, "check", False):    # the nodes are ready: the MPI check decides the exit status
        from .check import after_create
        return after_create(ctx, spec.name, Result(output.to_data(status), text))
    return Result(output.to_data(status), text)


def cmd_autostop(ctx, a) -> Result:
    name = ctx.cluster_name()
    mgr = ctx.manager()
    st = mgr.status(name, with_cost=False)
    if a.duration and st.spec.storage == "none" and not ctx.confirm(
            f"cluster {name} has no shared storage: job output on the master's disk is lost "
            "when autostop stops it. Set autostop anyway?"):
        return Result(text="autostop unchanged")
    state = mgr.set_autostop(name, a.duration)
    text = (f"cluster {name}: autostop after {format_duration(a.duration)} idle (no job, no "
            "SSH session); keys, registry and shared storage stay, 'ec2mpi resize N' brings "
            "it back" if a.duration else f"cluster {name}: autostop off")
    return Result({"cluster": name, "autostop": a.duration,
                   "idle_since": state.get("idle_since") or None}, text)


def cmd_destroy(ctx, a) -> Result:
    name = validate_name(a.name)
    mgr = ctx.manager()
    try:
        st = mgr.status(name)
        kind = st.spec.storage
        storage = "no shared storage" if kind == "none" else f"its {kind} storage"
        what = (
            f"cluster {name}: {len(st.nodes)} node(s) ({output.lifecycle_mix(st.nodes)}), "
            f"{storage} "
            f"and everything tagged with it, saving about "
            f"{output.money(st.cost.per_hour if st.cost else None)}"
        )
    except Ec2mpiError:  # half-made or already partly gone: destroy still sweeps by tag
        what = f"everything tagged as cluster {name}"
    if not ctx.confirm(f"destroy {what}?"):
        return Result(text="nothing destroyed")
    bar = ctx.progress(f"destroy {name}")
    try:
        report = ctx.manager(progress=bar).destroy(name)
    finally:
        bar.finish()
    if userdirs.last_cluster() == name:
        userdirs.remember_cluster(None)
    return Result({"cluster": name, **output.to_data(report)}, output.format_destroy(name, report),
                  status=1 if report.leftovers else 0)


def cmd_list(ctx, a) -> Result:
    clusters = ctx.manager().list_clusters()
    current = userdirs.last_cluster()
    return Result(output.to_data(clusters), output.format_list(clusters, current))


def cmd_status(ctx, a) -> Result:
    status = ctx.manager().status(ctx.cluster_name())
    return Result(output.to_data(status), output.format_status(status))


def cmd_use(ctx, a) -> Result:
    name = validate_name(a.name)
    names = [s.name for s in ctx.manager().list_clusters()]
    if name not in names:
        raise UserError(
            f"no cluster named {name!r}", f"existing: {', '.join(sorted(names)) or 'none'}"
        )
    userdirs.remember_cluster(name)
    return Result({"cluster": name}, f"now using cluster {name}")


def cmd_cost(ctx, a) -> Result:
    name = ctx.cluster_name()
    cost = ctx.manager().cost(name)
    return Result(output.to_data(cost), f"cluster {name}: " + output.format_cost(cost))
