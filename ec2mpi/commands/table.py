"""The one command table: every ec2mpi command defined once, served by the CLI and the shell.

A Command names its arguments (types, help, completion source), its handler, and
whether it destroys something or waits. `cli.py` builds argparse from it, the shell
builds completion and help from it, and both run commands through `run.execute`, so
names, help, output and errors are the same in both faces.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from ..config import (
    SPOT_FALLBACKS,
    STORAGE_KINDS,
    parse_cidr,
    parse_count,
    parse_duration,
    parse_instance_types,
    parse_policy_arns,
)
from . import access, farm, files, help, images, jobs, lifecycle, local, nodes
from . import check as check_cmd
from .context import Context, Result


@dataclass(frozen=True)
class Arg:
    """One argument: `flags` is ('name',) for a positional or ('--opt', '-o') for an option."""

    flags: tuple
    help: str
    type: Callable | None = None
    nargs: Any = None
    default: Any = None
    choices: tuple | None = None
    action: str | None = None
    const: Any = None
    metavar: str | None = None
    dest: str | None = None
    complete: str | None = None   # clusters | nodes | instance_types | files | choices
    group: str | None = None      # arguments sharing a group are mutually exclusive

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


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: Callable[[Context, argparse.Namespace], Result]
    args: tuple = ()
    destructive: bool = False        # asks for confirmation (or --yes)
    waits: bool = False              # shows a progress bar; Ctrl-C stops waiting only
    remainder: str | None = None  # dest that receives everything after '--'
    epilog: str = ""


ON = {"action": "store_true", "default": False}   # a flag that is off unless given

GLOBAL_ARGS = (
    Arg(("--local",), "use the local cloud on this machine (root) instead of AWS", **ON),
    Arg(("--profile",), "AWS profile to use", metavar="NAME"),
    Arg(("--region",), "AWS region to use", metavar="REGION"),
    Arg(("-c", "--cluster"), "cluster to act on (default: the only one, or the last one used)",
        metavar="NAME", complete="clusters"),
    Arg(("--json",), "machine-readable output on stdout (messages go to stderr)", **ON),
    Arg(("--yes", "-y"), "do not ask for confirmation", **ON),
    Arg(("-v", "--verbose"), "log every AWS call to stderr (and tracebacks of internal errors)",
        **ON),
)

# Capacity failover (cluster/capacity.py): what create, add-nodes and resize do when EC2
# has too little capacity in every (type, AZ) pool.
_CAPACITY_ARGS = (
    Arg(("--spot-fallback",), "when spot capacity runs out in every type and zone: "
        "'on-demand' launches the rest on-demand, 'none' (the default) does not",
        choices=SPOT_FALLBACKS, dest="spot_fallback", complete="choices"),
    Arg(("--min-nodes",), "succeed with at least M nodes (default: all) and say how many are "
        "missing (with keep-size the master keeps trying); below M, the nodes launched are "
        "terminated and the command fails", type=parse_count, metavar="M", dest="min_nodes"),
)

_WAIT_ARGS = (
    Arg(("--no-wait",), "return once launched, without waiting for nodes to be ready", **ON),
    Arg(("--timeout",), "seconds to wait for nodes to be ready (default 900)", type=float,
        default=900.0, metavar="SECONDS"),
)

_CREATE_ARGS = (
    Arg(("name",), "cluster name (a-z, 0-9, '-'); asked for in the shell when missing",
        nargs="?", complete="new-cluster"),
    Arg(("--nodes", "-n"), "number of nodes, master included (default 2)", type=parse_count,
        metavar="N"),
    Arg(("--instance-type", "-t"), "instance types, comma-separated, best first",
        type=parse_instance_types, metavar="TYPES", dest="instance_type",
        complete="instance_types"),
    Arg(("--on-demand",), "on-demand instances instead of spot", action="store_const",
        const=False, dest="spot", group="lifecycle"),
    Arg(("--spot",), "spot instances (the default; overrides a template)",
        action="store_const", const=True, dest="spot", group="lifecycle"),
    Arg(("--storage",), "shared storage at /shared", choices=STORAGE_KINDS, complete="choices"),
    Arg(("--ssh-cidr",), "addresses allowed to SSH in (default: yours)", type=parse_cidr,
        metavar="CIDR"),
    Arg(("--image",), "AMI id, or 'stock' (default: latest Amazon Linux 2023, which installs "
        "Python, Open MPI and the agent at boot); the local cloud has 'baked' (its default) "
        "and 'stock'", metavar="AMI"),
    Arg(("--keep-size",), "replace lost or interrupted nodes (the default for spot clusters)",
        action="store_const", const=True, dest="keep_size", group="keep"),
    Arg(("--no-keep-size",), "never replace lost nodes", action="store_const", const=False,
        dest="keep_size", group="keep"),
    Arg(("--master-spot",), "the master on spot too (it runs healing and jobs: on-demand by "
        "default)", action="store_const", const=True, dest="master_spot"),
    Arg(("--job-policy-arn",), "IAM policy (ARN) for what jobs may do in AWS, e.g. read input "
        "from S3; comma-separated for several. Jobs get these rights through a job role, "
        "and none at all without this option", metavar="ARN", dest="job_policy_arn",
        type=parse_policy_arns),
    Arg(("--autostop",), "stop the cluster after this long idle (no job, no SSH session): "
        "minutes, or 90s, 45m, 2h; 'off' never. Default 1h with shared storage, off with "
        "--storage none", type=parse_duration, metavar="DURATION"),
    Arg(("--placement-group",), "launch into a cluster placement group (low latency)",
        action="store_const", const=True),
    Arg(("--template",), "TOML cluster template (flags override it), e.g. examples/cluster.toml",
        metavar="FILE", complete="files"),
    Arg(("--check",), "once the nodes are ready, run 'check' (exit status 1 if a node is slow "
        "or unreachable)", **ON),
)

_NODE = Arg(("node",), "master, node-K, an instance id or IP (default: master)", nargs="?",
            complete="nodes")

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("create", "create a cluster (spot by default) and wait for its nodes",
            lifecycle.cmd_create, _CREATE_ARGS + _CAPACITY_ARGS + _WAIT_ARGS, waits=True,
            epilog="Precedence: user defaults (config.toml [defaults]) < --template < flags."),
    Command("add-nodes", "add N nodes to the cluster and wait for them", nodes.cmd_add_nodes,
            (Arg(("count",), "how many nodes to add", type=parse_count, metavar="N"),)
            + _CAPACITY_ARGS + _WAIT_ARGS, waits=True),
    Command("remove-nodes", "remove N worker nodes, or the nodes named with --node",
            nodes.cmd_remove_nodes, (
                Arg(("count",), "how many worker nodes to remove", type=parse_count, nargs="?",
                    metavar="N"),
                Arg(("--node",), "a node to remove (node-K, instance id or IP); repeatable",
                    nargs="+", metavar="ID", complete="nodes"),
            ), destructive=True),
    Command("resize", "set the number of nodes (master included): adds or removes the difference",
            nodes.cmd_resize,
            (Arg(("count",), "the node count to reach", type=parse_count, metavar="N"),)
            + _CAPACITY_ARGS + _WAIT_ARGS, waits=True,
            epilog="Safe to re-run: a resize interrupted by Ctrl-C or a crash never launches "
                   "twice. Shrinking asks first (or --yes) and removes lost, draining, then the "
                   "newest nodes."),
    Command("autostop", "stop the cluster after DURATION idle (no job, no SSH session); "
            "'off' keeps it running", lifecycle.cmd_autostop,
            (Arg(("duration",), "minutes, or 90s, 45m, 2h; or off", type=parse_duration,
                 metavar="DURATION|off"),),
            epilog="Idle means no job or farm runs and no SSH session is open on any node. "
                   "Stopping terminates every node (healing stops first); keys, registry and "
                   "shared storage stay, and 'ec2mpi resize N' brings the cluster back with "
                   "the same /shared. status shows the countdown."),
    Command("list", "list clusters (* marks the current one)", lifecycle.cmd_list),
    Command("status", "show the cluster's nodes, their state and the cost per hour",
            lifecycle.cmd_status),
    Command("use", "make NAME the cluster commands act on by default", lifecycle.cmd_use,
            (Arg(("name",), "cluster name", complete="clusters"),)),
    Command("hostfile", "print the cluster's MPI hostfile", nodes.cmd_hostfile),
    Command("ssh", "log in to a node (default: the master), or run CMD there after '--'",
            access.cmd_ssh, (_NODE,), remainder="remote_command",
            epilog="Example: ec2mpi ssh -- mpirun -np 8 hostname"),
    Command("run", "run an MPI job on the cluster (mpirun COMMAND on the master, supervised)",
            jobs.cmd_run, (
                Arg(("-np", "--np"), "number of ranks (default: every slot of the hostfile)",
                    type=int, metavar="N", dest="np"),
                Arg(("--restarts",), "restart it this often when a node it uses is lost or "
                    "interrupted (default 0)", type=int, default=0, metavar="K"),
                Arg(("--checkpoint-signal",), "signal sent to the job before a restart "
                    "(default SIGUSR1)", default="SIGUSR1", metavar="SIG"),
                Arg(("--detach",), "print the job id and return; the job runs on", **ON),
            ), remainder="job_command",
            epilog="The job belongs to the cluster: its output goes to /shared/jobs/ID/ (the "
                   "master's disk with --storage none), and Ctrl-C or a closed laptop never "
                   "stops it (Ctrl-C detaches; 'cancel ID' stops it). With --restarts, an "
                   "interrupted job gets the checkpoint signal, then runs again on the healed "
                   "cluster with EC2MPI_RESTART=<n> set. Example: ec2mpi run -np 8 "
                   "--restarts 2 -- python app.py"),
    Command("farm", "run each line of TASKFILE as a task on some node (a supervised job)",
            farm.cmd_farm, (
                Arg(("taskfile",), "file with one shell command per line ('-': stdin)",
                    nargs="?", metavar="TASKFILE", complete="files"),
                Arg(("--retries",), "run a failing task up to K more times (default 0)",
                    type=int, metavar="K"),
                Arg(("--resume",), "go on with what farm ID has not done", metavar="ID"),
                Arg(("--detach",), "print the farm's job id and return; it runs on", **ON),
            ), epilog=farm.EPILOG),
    Command("check", "an MPI check across every ready node: latency, bandwidth, allreduce, "
            "versions; names slow nodes", check_cmd.cmd_check, (
                Arg(("--drain-slow",), "remove the slow worker nodes (asks first, or --yes); "
                    "with keep-size new nodes replace them", **ON),
                Arg(("--timeout",), "seconds the check may take (default 300)", type=float,
                    default=check_cmd.DEFAULT_TIMEOUT, metavar="SECONDS"),
            ), epilog=check_cmd.EPILOG),
    Command("jobs", "list the cluster's jobs: state, restarts, nodes, age", jobs.cmd_jobs),
    Command("attach", "follow a job's output until it ends (its exit status is ours)",
            jobs.cmd_attach, (Arg(("id",), "job id (see 'jobs')", metavar="ID"),)),
    Command("cancel", "stop a job on every node", jobs.cmd_cancel,
            (Arg(("id",), "job id (see 'jobs')", metavar="ID"),)),
    Command("put", "copy a local file or directory to the cluster's shared storage",
            files.cmd_put, (
                Arg(("local",), "local file or directory", complete="files"),
                Arg(("remote",), "destination, relative to the shared path (default: same name)",
                    nargs="?"),
            )),
    Command("get", "copy a file or directory from the cluster's shared storage", files.cmd_get, (
        Arg(("remote",), "source, relative to the shared path"),
        Arg(("local",), "local destination (default: same name here)", nargs="?",
            complete="files"),
    )),
    Command("ssh-config",
            "write the cluster's ssh files and print Host entries (NAME-master, NAME-node-K)",
            access.cmd_ssh_config),
    Command("parallel-hosts", "print a GNU parallel --sshloginfile for the ready nodes",
            access.cmd_parallel_hosts,
            epilog="Example: ec2mpi parallel-hosts > hosts; "
                   "parallel --sshloginfile hosts ::: tasks..."),
    Command("logs", "show a node's boot log (or its console output)", access.cmd_logs, (
        _NODE,
        Arg(("--console",), "show the EC2 console output instead of the boot log", **ON),
    )),
    Command("cost", "estimate what the cluster costs per hour", lifecycle.cmd_cost),
    Command("destroy", "delete the cluster and everything it made (asks first)",
            lifecycle.cmd_destroy,
            (Arg(("name",), "the cluster to destroy (always named explicitly)",
                 complete="clusters"),), destructive=True, waits=True),
    Command("bake-image", "bake an image with Python, Open MPI, mpi4py and this ec2mpi "
            "installed, so nodes boot in seconds; prints its id", images.cmd_bake_image, (
                Arg(("--image",), "base AMI id (default: latest Amazon Linux 2023; on the "
                    "local cloud 'stock')", metavar="AMI"),
                Arg(("--instance-type", "-t"), "the builder's instance type (default "
                    "c6i.large)", metavar="TYPE", dest="instance_type",
                    complete="instance_types"),
                Arg(("--subnet",), "the builder's subnet (default: a default subnet)",
                    metavar="SUBNET"),
                Arg(("--default",), "make create use this image in this region while ec2mpi "
                    "stays at this version", **ON),
                Arg(("--timeout",), "seconds the bake and the image may take each "
                    "(default 1800)", type=float, default=1800.0, metavar="SECONDS"),
            ), epilog=images.EPILOG),     # Ctrl-C ends it (after its cleanup), not a wait
    Command("local", "the local cloud: up | down | status | interrupt ID [--grace S] | "
            "kill ID | "
            "slow ID [--off] | capacity [TYPE[@AZ] COUNT [--spot|--on-demand]]",
            local.cmd_local, (
                Arg(("action",), "what to do",
                    choices=("up", "down", "status", "interrupt", "kill", "slow", "capacity"),
                    complete="choices"),
                Arg(("instance_id",), "instance to interrupt, kill or slow; for capacity: "
                    "TYPE[@AZ], e.g. c6i.large@us-east-1a", nargs="?",
                    metavar="ID", complete="nodes"),
                Arg(("count",), "for capacity: how many instances the pool still has, or "
                    "'unlimited'", nargs="?", metavar="COUNT"),
                Arg(("--spot",), "with capacity: the spot pool only", action="store_const",
                    const="spot", dest="lifecycle", group="lifecycle"),
                Arg(("--on-demand",), "with capacity: the on-demand pool only",
                    action="store_const", const="on-demand", dest="lifecycle",
                    group="lifecycle"),
                Arg(("--off",), "with slow: give the node its full link back", **ON),
                Arg(("--grace",), "with interrupt: seconds from the notice to the "
                    "termination (default 20; AWS gives 120)", type=float, default=20.0,
                    metavar="SECONDS"),
            )),
    Command("help", "list the commands, or explain one", help.cmd_help,
            (Arg(("topic",), "a command name", nargs="?", metavar="COMMAND",
                 complete="commands"),)),
)}
