"""Handlers of the cluster lifecycle: create, destroy, list, status, use, cost."""
from __future__ import annotations

import argparse

from .. import output, userdirs
from ..config import ClusterSpec, validate_name
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
             "job_policy_arns": getattr(args, "job_policy_arn", None)}
    data.update({k: v for k, v in flags.items() if v is not None})
    data["name"] = args.name
    if local_info is not None:
        data["region"] = local_info.region
        data.setdefault("ssh_cidr", local_info.ssh_cidr)
    return ClusterSpec.from_mapping(data)


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
    template, defaults = read_template(a.template), userdirs.user_defaults()
    region = a.region or template.get("region") or defaults.get("region")
    if region and not a.local:
        a.region = region
    ctx.args = a
    if a.local:
        _ = ctx.aws  # bring the local cloud up first: it fixes the region and the SSH range
    spec = spec_from_args(a, template, defaults, ctx.local_info if a.local else None)
    bar = ctx.progress(f"create {spec.name}")
    try:
        status = ctx.manager(progress=bar).create(spec, wait=not a.no_wait, timeout=a.timeout)
    finally:
        bar.finish()
    userdirs.remember_cluster(spec.name)
    text = output.format_status(status) + f"\nssh: open to {status.spec.ssh_cidr} only"
    if status.notice:
        text = status.notice + "\n" + text
    return Result(output.to_data(status), text)


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
