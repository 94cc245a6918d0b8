"""Handlers that reach the nodes: ssh, ssh-config, parallel-hosts, logs; and how to reach a node."""
from __future__ import annotations

from .. import output, userdirs
from ..errors import CloudError, UserError
from .context import Result


def resolve_node(status, ref: str | None):
    """A node from 'master', 'node-K', 'NAME-node-K', an instance id, an IP or a hostname."""
    labels = output.node_labels(status.nodes)
    if ref in (None, "", "master", "node-0", f"{status.name}-master", f"{status.name}-node-0"):
        node = status.master
        if node is None:
            raise CloudError(f"cluster {status.name} has no master yet", "see 'ec2mpi status'")
        return "master", node
    short = ref[len(status.name) + 1:] if ref.startswith(status.name + "-") else ref
    for label, node in zip(labels, status.nodes):
        if short == label or ref in (
            node.instance_id,
            node.private_ip,
            node.public_ip,
            node.hostname,
        ):
            return label, node
    raise UserError(f"no node {ref!r} in cluster {status.name}",
                    f"use one of: {', '.join(labels + [n.instance_id for n in status.nodes])}")


def links_for(status, local: bool, ready_only: bool = True):
    """How to reach each (ready) node: public IP on AWS, private IP on the local cloud, else via
    the master."""
    from ..remote import Link
    links = []
    for label, node in zip(output.node_labels(status.nodes), status.nodes):
        if ready_only and node.state != "ready":
            continue
        direct = node.private_ip if local else node.public_ip
        address = direct or node.private_ip
        links.append(
            Link(
                label,
                node.instance_id,
                address,
                via_master=not direct and label != "master",
                slots=node.slots or 1,
            )
        )
    return links


def _ready_link(ctx, status, ref):
    """The link to one node, refusing nodes that are not ready (never dial an address blindly)."""
    label, node = resolve_node(status, ref)
    if label == "master" and node.state == "lost":
        raise CloudError(f"the master of {status.name} ({node.instance_id}) is lost: "
                         f"{node.reason or 'its instance is gone'}",
                         f"launch a new one from the same state: ec2mpi create {status.name} "
                         f"(same settings) or ec2mpi resize N -c {status.name}")
    if node.state != "ready":
        raise CloudError(
            f"{label} ({node.instance_id}) is {node.state}, not ready",
            "wait for it ('ec2mpi status'), or read its boot log: ec2mpi logs " + label,
        )
    links = {l.label: l for l in links_for(status, bool(ctx.args.local))}
    if label != "master" and "master" not in links and links[label].via_master:
        raise CloudError(
            "the master is not ready, and this node is reached through it", "see 'ec2mpi status'"
        )
    return links[label], links.get("master")


def _open(ctx, name: str, ref: str | None):
    """(client, closers, status, link) for a ready node, logged in as the cluster user."""
    from .. import remote
    mgr = ctx.manager()
    status = mgr.status(name)
    link, master = _ready_link(ctx, status, ref)
    client, closers = remote.connect_link(link, master, status.spec.user, mgr.keys(name))
    return client, closers, status, link


def _close(closers) -> None:
    for c in closers:
        try:
            c.close()
        except Exception:  # noqa: BLE001, S110
            pass


def _ssh_files(ctx, name: str):
    """Write the cluster's ssh files under the config dir; returns (config path, links, status)."""
    from .. import remote
    mgr = ctx.manager()
    status = mgr.status(name)
    links = links_for(status, bool(ctx.args.local))
    config = remote.write_ssh_files(
        userdirs.cluster_dir(name), name, mgr.keys(name), links, status.spec.user
    )
    return config, links, status


def cmd_ssh(ctx, a) -> Result:
    """A login (the system ssh), or CMD on the node with ssh's semantics: Ctrl-C, SIGTERM or a
    lost connection stops the remote process tree (the node-side guard sees to that)."""
    import signal
    import threading

    from .. import remote
    name = ctx.cluster_name()
    if not a.remote_command:
        config, _links, status = _ssh_files(ctx, name)
        link, _ = _ready_link(ctx, status, a.node)
        return Result(status=remote.system_ssh(config, f"{name}-{link.label}"))
    client, closers, _, _ = _open(ctx, name, a.node)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _as_interrupt) if main else None
    try:
        return Result(status=remote.run(client, " ".join(a.remote_command), guard=True))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _close(closers)


def _as_interrupt(*_):
    raise KeyboardInterrupt


def cmd_ssh_config(ctx, a) -> Result:
    name = ctx.cluster_name()
    config, links, _status = _ssh_files(ctx, name)
    text = config.read_text()
    note = (
        f"# written to {config}; use it with: ssh -F {config} {name}-master\n"
        f"# or append these entries to ~/.ssh/config: ec2mpi ssh-config -c {name} >> "
        "~/.ssh/config\n"
    )
    if not links:
        note += "# no node is ready yet: run this again once 'ec2mpi status' shows ready nodes\n"
    return Result(
        {"cluster": name, "config": str(config), "hosts": [f"{name}-{l.label}" for l in links]},
        note + text.rstrip("\n"),
    )


def cmd_parallel_hosts(ctx, a) -> Result:
    from .. import remote
    name = ctx.cluster_name()
    config, links, _ = _ssh_files(ctx, name)
    if not links:
        ctx.say(f"ec2mpi: no node of {name} is ready yet; the list is empty")
    text = remote.parallel_hosts_text(name, links, config)
    return Result({"cluster": name, "config": str(config),
                   "sshlogins": text.splitlines()}, text.rstrip("\n") or None)


def cmd_logs(ctx, a) -> Result:
    from .. import remote
    name = ctx.cluster_name()
    mgr = ctx.manager()
    status = mgr.status(name)
    label, node = resolve_node(status, a.node)
    if not a.console and node.state == "ready":
        try:
            client, closers, _, _ = _open(ctx, name, a.node)
        except CloudError as err:
            ctx.say(
                f"ec2mpi: cannot read the boot log over ssh ({err.message}); showing the console "
                "output"
            )
        else:
            try:
                return Result(status=remote.run(client, "tail -n +1 /var/log/ec2mpi/*.log 2>&1"))
            finally:
                _close(closers)
    text = mgr.console_output(name, node.instance_id)
    return Result(
        {"cluster": name, "node": label, "instance_id": node.instance_id, "console": text},
        text.rstrip("\n") or f"(no console output from {label} yet)",
    )
