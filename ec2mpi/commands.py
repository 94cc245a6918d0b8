"""The one command table: every ec2mpi command defined once, served by the CLI and the shell.

A Command names its arguments (types, help, completion source), its handler, and
whether it destroys something or waits. `cli.py` builds argparse from it, `shell.py`
builds completion and help from it, and both run commands through `execute`, so names,
help, output and errors are the same in both faces.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import catalog, output, userdirs
from .config import STORAGE_KINDS, ClusterSpec, parse_cidr, parse_count, parse_instance_types, validate_name
from .errors import CloudError, Ec2mpiError, UserError

EXIT_INTERRUPTED = 130


# -- the table's vocabulary -------------------------------------------------------------

@dataclass(frozen=True)
class Arg:
    """One argument: `flags` is ('name',) for a positional or ('--opt', '-o') for an option."""

    flags: tuple
    help: str
    type: Optional[Callable] = None
    nargs: Any = None
    default: Any = None
    choices: Optional[tuple] = None
    action: Optional[str] = None
    const: Any = None
    metavar: Optional[str] = None
    dest: Optional[str] = None
    complete: Optional[str] = None   # clusters | nodes | instance_types | files | choices
    group: Optional[str] = None      # arguments sharing a group are mutually exclusive

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    def add_to(self, parser, suppress_default: bool = False) -> None:
        kwargs = {"help": self.help}
        for key in ("type", "nargs", "choices", "action", "const", "metavar", "dest"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        kwargs["default"] = argparse.SUPPRESS if suppress_default else self.default
        parser.add_argument(*self.flags, **kwargs)


@dataclass
class Result:
    """What a handler returns: `data` for --json, `text` for people, `status` the exit status."""

    data: Any = None
    text: Optional[str] = None
    status: int = 0


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: Callable[["Context", argparse.Namespace], Result]
    args: tuple = ()
    destructive: bool = False        # asks for confirmation (or --yes)
    waits: bool = False              # shows a progress bar; Ctrl-C stops waiting only
    remainder: Optional[str] = None  # dest that receives everything after '--'
    epilog: str = ""


# -- arguments every command accepts (before or after the command name) ----------------------

GLOBAL_ARGS = (
    Arg(("--local",), "use the local cloud on this machine (root) instead of AWS", action="store_true", default=False),
    Arg(("--profile",), "AWS profile to use", metavar="NAME"),
    Arg(("--region",), "AWS region to use", metavar="REGION"),
    Arg(("-c", "--cluster"), "cluster to act on (default: the only one, or the last one used)",
        metavar="NAME", complete="clusters"),
    Arg(("--json",), "machine-readable output on stdout (messages go to stderr)", action="store_true", default=False),
    Arg(("--yes", "-y"), "do not ask for confirmation", action="store_true", default=False),
    Arg(("-v", "--verbose"), "log every AWS call to stderr (and tracebacks of internal errors)",
        action="store_true", default=False),
)
GLOBAL_DESTS = ("local", "profile", "region", "cluster", "json", "yes", "verbose")


# -- the context a command runs in ----------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line per change otherwise)."""

    def __init__(self, stream, what: str):
        self.stream, self.what = stream, what
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._last = None
        self._lock = threading.Lock()
        self.shown = False

    def __call__(self, done: int, total: int, message: str = "") -> None:
        try:
            line = f"{self.what} {output.progress_bar(done, total, message)}"
            with self._lock:
                if self.tty:
                    self.stream.write("\r" + line[:200] + "\x1b[K")
                elif (done, total, message) != self._last:
                    self.stream.write(line + "\n")
                self.stream.flush()
                self._last, self.shown = (done, total, message), True
        except Exception:  # progress must never break the operation it reports on
            pass

    def finish(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


class Context:
    """Where a command runs: its options, the face's I/O and questions, and a lazy AWS session.

    Faces differ only in what they pass here: the shell can ask questions and run the
    create dialog; a script without a terminal cannot, so destructive commands need --yes.
    """

    def __init__(self, args=None, out=None, err=None, can_ask: Optional[bool] = None,
                 ask: Optional[Callable[[str], bool]] = None, dialog: Optional[Callable] = None):
        self.args = args or argparse.Namespace(**{d: None for d in GLOBAL_DESTS})
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.can_ask = (sys.stdin.isatty() and self.err.isatty()) if can_ask is None else can_ask
        self._ask = ask or self._ask_on_terminal
        self.dialog = dialog
        self._aws = None
        self._aws_key = None
        self._unsubscribe = None
        self.local_info = None

    # messages and questions
    def say(self, message: str) -> None:
        print(message, file=self.err, flush=True)

    def confirm(self, question: str) -> bool:
        if getattr(self.args, "yes", False):
            return True
        if not self.can_ask:
            raise UserError("refusing to do this without confirmation", "pass --yes to confirm in scripts")
        return self._ask(question)

    def _ask_on_terminal(self, question: str) -> bool:
        self.err.write(f"{question} [y/N] ")
        self.err.flush()
        answer = sys.stdin.readline()
        return answer.strip().lower() in ("y", "yes")

    def progress(self, what: str) -> Progress:
        return Progress(self.err, what)

    # AWS
    @property
    def aws(self):
        key = (bool(self.args.local), self.args.profile, self.args.region)
        if self._aws is None or key != self._aws_key:
            if self.args.local:
                from .localcloud import server
                self.local_info = server.ensure_up(progress=self.progress("local cloud"))
                self._aws = server.session(self.local_info)
            else:
                from .aws.session import AwsSession
                self._aws = AwsSession(profile=self.args.profile, region=self.args.region)
            self._aws_key, self._unsubscribe = key, None
        self._log_calls(bool(self.args.verbose))
        return self._aws

    def _log_calls(self, on: bool) -> None:
        if on and self._unsubscribe is None:
            self._unsubscribe = self._aws.on_call(lambda svc, op: self.say(f"aws: {svc}:{op}"))
        elif not on and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def manager(self, progress=None):
        from .cluster import ClusterManager
        return ClusterManager(self.aws, progress=progress)

    def cluster_name(self) -> str:
        """-c NAME, else the only cluster, else the last one used (remembered in the config dir)."""
        if self.args.cluster:
            name = validate_name(self.args.cluster)
            userdirs.remember_cluster(name)
            return name
        names = [s.name for s in self.manager().list_clusters()]
        if len(names) == 1:
            return names[0]
        last = userdirs.last_cluster()
        if last in names:
            return last
        if not names:
            raise UserError("there is no cluster yet", "create one with: ec2mpi create NAME")
        raise UserError(f"{len(names)} clusters exist ({', '.join(sorted(names))}) and none was chosen",
                        "pass -c NAME, or run: ec2mpi use NAME")


# -- parsing ------------------------------------------------------------------------------

class ParserExit(Exception):
    """argparse wanted to exit (after --help): the face decides what that means."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting."""

    def error(self, message):
        if message.startswith("argument COMMAND: invalid choice"):
            word = message.split("'")[1] if "'" in message else "?"
            raise UserError(f"unknown command {word!r}", "'help' lists the commands")
        raise UserError(f"{self.prog}: {message}", f"see: {self.prog} --help")

    def exit(self, status=0, message=None):
        if message:
            sys.stderr.write(message)
        raise ParserExit(status)


def build_parser(prog: str = "ec2mpi") -> Parser:
    """argparse over the table; global options are accepted before and after the command."""
    parser = Parser(prog=prog, description="MPI clusters on EC2 (spot by default), or on the local cloud.",
                    epilog="Run without a command on a terminal for the interactive shell.")
    for arg in GLOBAL_ARGS:
        arg.add_to(parser)
    subs = parser.add_subparsers(dest="command_name", metavar="COMMAND", parser_class=Parser)
    for cmd in COMMANDS.values():
        sub = subs.add_parser(cmd.name, help=cmd.help, description=cmd.help, epilog=cmd.epilog or None)
        groups: dict = {}
        for arg in cmd.args:
            target = sub
            if arg.group:
                if arg.group not in groups:
                    groups[arg.group] = sub.add_mutually_exclusive_group()
                target = groups[arg.group]
            arg.add_to(target)
        if cmd.remainder:
            sub.set_defaults(**{cmd.remainder: []})
        for arg in GLOBAL_ARGS:
            arg.add_to(sub, suppress_default=True)
    return parser


def parse(argv: list[str], base: Optional[argparse.Namespace] = None):
    """argv -> (Namespace, Command or None). Everything after '--' goes to the command's remainder.

    `base` supplies global options the line does not set (the shell's start-up options)."""
    argv = list(argv)
    rest = None
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    command = COMMANDS.get(args.command_name) if args.command_name else None
    if rest is not None:
        if command is None or not command.remainder:
            raise UserError(f"unexpected arguments after '--': {' '.join(rest)}",
                            "only 'ssh NODE -- CMD' takes a command after '--'")
        setattr(args, command.remainder, rest)
    if base is not None:
        for dest in GLOBAL_DESTS:
            if getattr(args, dest, None) in (None, False) and getattr(base, dest, None) not in (None, False):
                setattr(args, dest, getattr(base, dest))
    return args, command


# -- running -------------------------------------------------------------------------------

def execute(command: Command, args: argparse.Namespace, ctx: Context) -> int:
    """Run one command and print its result; every failure becomes one line and an exit status."""
    ctx.args = args
    try:
        if command.destructive and not args.yes and not ctx.can_ask:
            raise UserError(f"'{command.name}' needs confirmation and there is no terminal to ask on",
                            "pass --yes to confirm in scripts")
        result = command.handler(ctx, args) or Result()
        emit(ctx, result)
        return result.status
    except Ec2mpiError as err:
        ctx.say(f"ec2mpi: error: {err}")
        return err.exit_status
    except ParserExit as exc:
        return exc.status
    except KeyboardInterrupt:
        if command.waits:
            ctx.say("\nec2mpi: stopped waiting. Nothing is half-made: the cluster stays consistent and "
                    "nodes already launched keep booting; 'ec2mpi status' shows where it is.")
        else:
            ctx.say("\nec2mpi: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `ec2mpi list | head`: the reader left, nothing to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), ctx.out.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("botocore", "boto3", "urllib3"):
            # the network or the endpoint failed below the adapters: an AWS failure, not a bug
            if args.verbose:
                traceback.print_exc(file=ctx.err)
            ctx.say(f"ec2mpi: error: AWS call failed: {type(exc).__name__}: {exc}; "
                    "check your network and region (or the endpoint), then retry")
            return 1
        # anything else is a bug: say so in one line, traceback only with -v
        if args.verbose:
            traceback.print_exc(file=ctx.err)
        ctx.say(f"ec2mpi: internal error: {type(exc).__name__}: {exc}"
                + ("" if args.verbose else " (run with -v for the traceback)"))
        return 1


def emit(ctx: Context, result: Result) -> None:
    if ctx.args.json:
        if result.data is not None:
            print(json.dumps(result.data, indent=2, sort_keys=True, default=str), file=ctx.out, flush=True)
    elif result.text:
        print(result.text, file=ctx.out, flush=True)


def run_line(argv: list[str], ctx: Context, base: Optional[argparse.Namespace] = None) -> int:
    """Parse and run one command line (used by the shell for every line it reads)."""
    try:
        args, command = parse(argv, base)
    except ParserExit as exc:
        return exc.status
    except Ec2mpiError as err:
        ctx.say(f"ec2mpi: error: {err}")
        return err.exit_status
    if command is None:
        ctx.say("ec2mpi: error: no command given; type 'help' for the list")
        return 2
    return execute(command, args, ctx)


# -- helpers shared by handlers ---------------------------------------------------------

def spec_from_args(args: argparse.Namespace, template: Optional[dict] = None, defaults: Optional[dict] = None,
                   local_info=None) -> ClusterSpec:
    """User defaults < template < flags (< the local cloud's fixed region and SSH range)."""
    data: dict = {}
    data.update(defaults or {})
    data.update(template or {})
    flags = {"nodes": args.nodes, "instance_types": args.instance_type, "spot": args.spot,
             "storage": args.storage, "ssh_cidr": args.ssh_cidr, "image_id": args.image,
             "placement_group": args.placement_group, "region": getattr(args, "region", None)}
    data.update({k: v for k, v in flags.items() if v is not None})
    data["name"] = args.name
    if local_info is not None:
        data["region"] = local_info.region
        data.setdefault("ssh_cidr", local_info.ssh_cidr)
    return ClusterSpec.from_mapping(data)


def read_template(path: Optional[str]) -> dict:
    if not path:
        return {}
    data = userdirs.read_toml(path)
    return dict(data.get("cluster", data))


def per_hour_of(nodes, cost) -> Optional[float]:
    """What these nodes cost per hour, from the cluster's own price list (or the catalogue)."""
    total = 0.0
    for n in nodes:
        entry = (cost.by_type.get(n.instance_type) if cost else None)
        unit = entry[1] if entry and len(entry) > 1 else catalog.price(n.instance_type, n.lifecycle == "spot")
        if unit is None:
            return None
        total += unit
    return round(total, 4)


def resolve_node(status, ref: Optional[str]):
    """A node from 'master', 'node-K', 'NAME-node-K', an instance id, an IP or a hostname."""
    labels = output.node_labels(status.nodes)
    if ref in (None, "", "master", "node-0", f"{status.name}-master", f"{status.name}-node-0"):
        node = status.master
        if node is None:
            raise CloudError(f"cluster {status.name} has no master yet", "see 'ec2mpi status'")
        return "master", node
    short = ref[len(status.name) + 1:] if ref.startswith(status.name + "-") else ref
    for label, node in zip(labels, status.nodes):
        if short == label or ref in (node.instance_id, node.private_ip, node.public_ip, node.hostname):
            return label, node
    raise UserError(f"no node {ref!r} in cluster {status.name}",
                    f"use one of: {', '.join(labels + [n.instance_id for n in status.nodes])}")


def links_for(status, local: bool, ready_only: bool = True):
    """How to reach each (ready) node: public IP on AWS, private IP on the local cloud, else via the master."""
    from .remote import Link
    links = []
    for label, node in zip(output.node_labels(status.nodes), status.nodes):
        if ready_only and node.state != "ready":
            continue
        direct = node.private_ip if local else node.public_ip
        address = direct or node.private_ip
        links.append(Link(label, node.instance_id, address, via_master=not direct and label != "master",
                           slots=node.slots or 1))
    return links


def _ready_link(ctx, status, ref):
    """The link to one node, refusing nodes that are not ready (never dial an address blindly)."""
    label, node = resolve_node(status, ref)
    if node.state != "ready":
        raise CloudError(f"{label} ({node.instance_id}) is {node.state}, not ready",
                         "wait for it ('ec2mpi status'), or read its boot log: ec2mpi logs " + label)
    links = {l.label: l for l in links_for(status, bool(ctx.args.local))}
    if label != "master" and "master" not in links and links[label].via_master:
        raise CloudError("the master is not ready, and this node is reached through it", "see 'ec2mpi status'")
    return links[label], links.get("master")


def _open(ctx, name: str, ref: Optional[str]):
    """(client, closers, status, link) for a ready node, logged in as the cluster user."""
    from . import remote
    mgr = ctx.manager()
    status = mgr.status(name)
    link, master = _ready_link(ctx, status, ref)
    client, closers = remote.connect_link(link, master, status.spec.user, mgr.keys(name))
    return client, closers, status, link


def _close(closers) -> None:
    for c in closers:
        try:
            c.close()
        except Exception:
            pass


def _ssh_files(ctx, name: str):
    """Write the cluster's ssh files under the config dir; returns (config path, links, status)."""
    from . import remote
    mgr = ctx.manager()
    status = mgr.status(name)
    links = links_for(status, bool(ctx.args.local))
    config = remote.write_ssh_files(userdirs.cluster_dir(name), name, mgr.keys(name), links, status.spec.user)
    return config, links, status


# -- handlers -------------------------------------------------------------------------------

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
    return Result(output.to_data(status), output.format_status(status))


def cmd_add_nodes(ctx, a) -> Result:
    name = ctx.cluster_name()
    bar = ctx.progress(f"add-nodes {name}")
    try:
        added = ctx.manager(progress=bar).add_nodes(name, a.count, wait=not a.no_wait, timeout=a.timeout)
    finally:
        bar.finish()
    ids = [getattr(x, "instance_id", x) for x in added]
    return Result({"cluster": name, "added": ids},
                  f"added {len(ids)} node(s) to {name}: {', '.join(ids)}" if ids else f"no node added to {name}")


def cmd_remove_nodes(ctx, a) -> Result:
    if a.count is None and not a.node:
        raise UserError("remove-nodes needs a count or --node ID", "e.g. ec2mpi remove-nodes 2, or --node node-3")
    name = ctx.cluster_name()
    mgr = ctx.manager()
    status = mgr.status(name)
    ids = None
    if a.node:
        chosen = [resolve_node(status, ref) for ref in a.node]
        if any(label == "master" for label, _ in chosen):
            raise UserError("the master cannot be removed on its own", f"destroy the cluster instead: ec2mpi destroy {name}")
        ids = sorted({node.instance_id for _, node in chosen})
        gone = [n for n in status.nodes if n.instance_id in ids]
        what = f"{len(ids)} node(s) ({', '.join(ids)})"
    else:
        workers = [n for n in status.nodes if n.role != "master"]
        if a.count > len(workers):
            raise UserError(f"cluster {name} has {len(workers)} worker node(s), cannot remove {a.count}",
                            f"give at most {len(workers)}, or destroy the cluster")
        gone = workers[-a.count:]
        what = f"{a.count} of {len(workers)} worker node(s)"
    saves = per_hour_of(gone, status.cost)
    if not ctx.confirm(f"remove {what} from cluster {name}, saving about {output.money(saves)}?"):
        return Result(text="nothing removed")
    removed = mgr.remove_nodes(name, count=None if ids else a.count, instance_ids=ids)
    removed = [getattr(x, "instance_id", x) for x in removed]
    return Result({"cluster": name, "removed": removed, "saves_per_hour": saves},
                  f"removed {len(removed)} node(s) from {name}: {', '.join(removed)} (saves {output.money(saves)})")


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
        raise UserError(f"no cluster named {name!r}", f"existing: {', '.join(sorted(names)) or 'none'}")
    userdirs.remember_cluster(name)
    return Result({"cluster": name}, f"now using cluster {name}")


def cmd_hostfile(ctx, a) -> Result:
    name = ctx.cluster_name()
    text = ctx.manager().hostfile(name)
    return Result({"cluster": name, "hostfile": text}, text.rstrip("\n"))


def cmd_cost(ctx, a) -> Result:
    name = ctx.cluster_name()
    cost = ctx.manager().cost(name)
    return Result(output.to_data(cost), f"cluster {name}: " + output.format_cost(cost))


def cmd_destroy(ctx, a) -> Result:
    name = validate_name(a.name)
    mgr = ctx.manager()
    try:
        st = mgr.status(name)
        what = (f"cluster {name}: {len(st.nodes)} node(s) ({output.lifecycle_mix(st.nodes)}), "
                f"{'no shared storage' if st.spec.storage == 'none' else 'its ' + st.spec.storage + ' storage'} "
                f"and everything tagged with it, saving about "
                f"{output.money(st.cost.per_hour if st.cost else per_hour_of(st.nodes, None))}")
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


def cmd_ssh(ctx, a) -> Result:
    from . import remote
    name = ctx.cluster_name()
    if not a.remote_command:
        config, links, status = _ssh_files(ctx, name)
        link, _ = _ready_link(ctx, status, a.node)
        return Result(status=remote.system_ssh(config, f"{name}-{link.label}"))
    client, closers, _, _ = _open(ctx, name, a.node)
    try:
        return Result(status=remote.run(client, " ".join(a.remote_command)))
    finally:
        _close(closers)


def cmd_put(ctx, a) -> Result:
    from . import remote
    name = ctx.cluster_name()
    client, closers, status, _ = _open(ctx, name, None)
    try:
        target = remote.remote_path(status.spec.shared_path, a.remote, os.path.basename(a.local.rstrip("/")))
        sent = remote.put(client, a.local, target)
    finally:
        _close(closers)
    return Result({"cluster": name, "local": a.local, "remote": target, "bytes": sent},
                  f"{a.local} -> {name}:{target} ({sent} bytes)")


def cmd_get(ctx, a) -> Result:
    from . import remote
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


def cmd_ssh_config(ctx, a) -> Result:
    name = ctx.cluster_name()
    config, links, status = _ssh_files(ctx, name)
    text = config.read_text()
    note = (f"# written to {config}; use it with: ssh -F {config} {name}-master\n"
            f"# or append these entries to ~/.ssh/config: ec2mpi ssh-config -c {name} >> ~/.ssh/config\n")
    if not links:
        note += "# no node is ready yet: run this again once 'ec2mpi status' shows ready nodes\n"
    return Result({"cluster": name, "config": str(config), "hosts": [f"{name}-{l.label}" for l in links]},
                  note + text.rstrip("\n"))


def cmd_parallel_hosts(ctx, a) -> Result:
    from . import remote
    name = ctx.cluster_name()
    config, links, _ = _ssh_files(ctx, name)
    if not links:
        ctx.say(f"ec2mpi: no node of {name} is ready yet; the list is empty")
    text = remote.parallel_hosts_text(name, links, config)
    return Result({"cluster": name, "config": str(config),
                   "sshlogins": text.splitlines()}, text.rstrip("\n") or None)


def cmd_logs(ctx, a) -> Result:
    from . import remote
    name = ctx.cluster_name()
    mgr = ctx.manager()
    status = mgr.status(name)
    label, node = resolve_node(status, a.node)
    if not a.console and node.state == "ready":
        try:
            client, closers, _, _ = _open(ctx, name, a.node)
        except CloudError as err:
            ctx.say(f"ec2mpi: cannot read the boot log over ssh ({err.message}); showing the console output")
        else:
            try:
                return Result(status=remote.run(client, "tail -n +1 /var/log/ec2mpi/*.log 2>&1"))
            finally:
                _close(closers)
    text = mgr.console_output(name, node.instance_id)
    return Result({"cluster": name, "node": label, "instance_id": node.instance_id, "console": text},
                  text.rstrip("\n") or f"(no console output from {label} yet)")


def cmd_local(ctx, a) -> Result:
    from .localcloud import server
    if a.action in ("interrupt", "kill") and not a.instance_id:
        raise UserError(f"local {a.action} needs an instance id", f"e.g. ec2mpi local {a.action} i-0123456789abcdef0")
    if a.action == "up":
        bar = ctx.progress("local cloud")
        try:
            info = server.ensure_up(progress=bar)
        finally:
            bar.finish()
        return Result(output.to_data(info), f"local cloud up: {info.endpoint} (pid {info.pid}, ssh from {info.ssh_cidr})")
    if a.action == "down":
        server.down()
        return Result({"down": True}, "local cloud stopped")
    if a.action == "status":
        st = server.status()
        if st is None:
            return Result({"up": False}, "local cloud is down (start it with: ec2mpi local up)")
        text = "\n".join([
            f"local cloud is up (pid {st['pid']}, for {st['uptime']:.0f} s): {len(st['nodes'])} node(s) running",
            f"  control plane  {st['endpoint']}  (CA {st['ca_path']})",
            f"  metadata       {st['imds']}",
            f"  nodes' network {st['ssh_cidr']} on bridge ec2mpi0",
            f"  state          {st['state_dir']}  (stop it all with: ec2mpi local down)"])
        return Result({"up": True, **st}, text)
    if a.action == "interrupt":
        server.interrupt(a.instance_id)
        return Result({"interrupted": a.instance_id}, f"spot interruption notice sent to {a.instance_id}")
    server.kill(a.instance_id)
    return Result({"killed": a.instance_id}, f"{a.instance_id} killed")


def cmd_help(ctx, a) -> Result:
    if a.topic:
        if a.topic not in COMMANDS:
            raise UserError(f"no command {a.topic!r}", "type 'help' for the list of commands")
        parser = build_parser()
        sub = next(act for act in parser._actions if isinstance(act, argparse._SubParsersAction))
        return Result({"command": a.topic, "help": COMMANDS[a.topic].help}, sub.choices[a.topic].format_help().rstrip())
    return Result([{"command": c.name, "help": c.help} for c in COMMANDS.values()], help_text())


def help_text() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["commands (help COMMAND for details):"]
    lines += [f"  {c.name.ljust(width)}  {c.help}" for c in COMMANDS.values()]
    lines.append("global options: " + ", ".join(a.flags[0] for a in GLOBAL_ARGS))
    return "\n".join(lines)


# -- the table ------------------------------------------------------------------------------

_WAIT_ARGS = (
    Arg(("--no-wait",), "return once launched, without waiting for nodes to be ready", action="store_true", default=False),
    Arg(("--timeout",), "seconds to wait for nodes to be ready (default 900)", type=float, default=900.0, metavar="SECONDS"),
)

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("create", "create a cluster (spot by default) and wait for its nodes", cmd_create, (
        Arg(("name",), "cluster name (a-z, 0-9, '-'); asked for in the shell when missing", nargs="?",
            complete="new-cluster"),
        Arg(("--nodes", "-n"), "number of nodes, master included (default 2)", type=parse_count, metavar="N"),
        Arg(("--instance-type", "-t"), "instance types, comma-separated, best first", type=parse_instance_types,
            metavar="TYPES", dest="instance_type", complete="instance_types"),
        Arg(("--on-demand",), "on-demand instances instead of spot", action="store_const", const=False,
            dest="spot", group="lifecycle"),
        Arg(("--spot",), "spot instances (the default; overrides a template)", action="store_const", const=True,
            dest="spot", group="lifecycle"),
        Arg(("--storage",), "shared storage at /shared", choices=STORAGE_KINDS, complete="choices"),
        Arg(("--ssh-cidr",), "addresses allowed to SSH in (default: yours)", type=parse_cidr, metavar="CIDR"),
        Arg(("--image",), "AMI id (default: latest Amazon Linux 2023)", metavar="AMI"),
        Arg(("--placement-group",), "launch into a cluster placement group (low latency)", action="store_const",
            const=True),
        Arg(("--template",), "TOML cluster template (flags override it), e.g. examples/cluster.toml",
            metavar="FILE", complete="files"),
    ) + _WAIT_ARGS, waits=True,
        epilog="Precedence: user defaults (config.toml [defaults]) < --template < flags."),
    Command("add-nodes", "add N nodes to the cluster and wait for them", cmd_add_nodes, (
        Arg(("count",), "how many nodes to add", type=parse_count, metavar="N"),
    ) + _WAIT_ARGS, waits=True),
    Command("remove-nodes", "remove N worker nodes, or the nodes named with --node", cmd_remove_nodes, (
        Arg(("count",), "how many worker nodes to remove", type=parse_count, nargs="?", metavar="N"),
        Arg(("--node",), "a node to remove (node-K, instance id or IP); repeatable", nargs="+", metavar="ID",
            complete="nodes"),
    ), destructive=True),
    Command("list", "list clusters (* marks the current one)", cmd_list),
    Command("status", "show the cluster's nodes, their state and the cost per hour", cmd_status),
    Command("use", "make NAME the cluster commands act on by default", cmd_use, (
        Arg(("name",), "cluster name", complete="clusters"),
    )),
    Command("hostfile", "print the cluster's MPI hostfile", cmd_hostfile),
    Command("ssh", "log in to a node (default: the master), or run CMD there after '--'", cmd_ssh, (
        Arg(("node",), "master, node-K, an instance id or IP (default: master)", nargs="?", complete="nodes"),
    ), remainder="remote_command", epilog="Example: ec2mpi ssh -- mpirun -np 8 hostname"),
    Command("put", "copy a local file or directory to the cluster's shared storage", cmd_put, (
        Arg(("local",), "local file or directory", complete="files"),
        Arg(("remote",), "destination, relative to the shared path (default: same name)", nargs="?"),
    )),
    Command("get", "copy a file or directory from the cluster's shared storage", cmd_get, (
        Arg(("remote",), "source, relative to the shared path"),
        Arg(("local",), "local destination (default: same name here)", nargs="?", complete="files"),
    )),
    Command("ssh-config", "write the cluster's ssh files and print Host entries (NAME-master, NAME-node-K)",
            cmd_ssh_config),
    Command("parallel-hosts", "print a GNU parallel --sshloginfile for the ready nodes", cmd_parallel_hosts,
            epilog="Example: ec2mpi parallel-hosts > hosts; parallel --sshloginfile hosts ::: tasks..."),
    Command("logs", "show a node's boot log (or its console output)", cmd_logs, (
        Arg(("node",), "master, node-K or an instance id (default: master)", nargs="?", complete="nodes"),
        Arg(("--console",), "show the EC2 console output instead of the boot log", action="store_true",
            default=False),
    )),
    Command("cost", "estimate what the cluster costs per hour", cmd_cost),
    Command("destroy", "delete the cluster and everything it made (asks first)", cmd_destroy, (
        Arg(("name",), "the cluster to destroy (always named explicitly)", complete="clusters"),
    ), destructive=True, waits=True),
    Command("local", "the local cloud: up | down | status | interrupt ID | kill ID", cmd_local, (
        Arg(("action",), "what to do", choices=("up", "down", "status", "interrupt", "kill"), complete="choices"),
        Arg(("instance_id",), "instance to interrupt or kill", nargs="?", metavar="ID", complete="nodes"),
    )),
    Command("help", "list the commands, or explain one", cmd_help, (
        Arg(("topic",), "a command name", nargs="?", metavar="COMMAND", complete="commands"),
    )),
)}
