"""Handler of `farm`: a task farm is a job (agent/farm.py runs it on the master), so `jobs`,
`attach`, `cancel` and Ctrl-C (detach) work on it as on `run`."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..agent.farm_state import parse_tasks
from ..errors import UserError
from .context import Result
from .jobs import AGENT, _follow, _job_id, _on_master

ATOMIC = ("a task may run more than once when its node vanishes mid-task (it is recorded done "
          "once): write outputs atomically, to a temporary file then rename it")

EPILOG = (
    "Each non-empty line of TASKFILE is a shell command ('#' starts a comment line), run in "
    "the shared directory "
    "(/shared; the cluster user's home with --storage none) on some node, one per slot, "
    "across the ready nodes; a task's id is its line number, and it sees EC2MPI_TASK, "
    "EC2MPI_TASK_ATTEMPT and EC2MPI_JOB_ID. The farm is a job: 'jobs', 'attach ID', "
    "'cancel ID', and Ctrl-C detaches. Its state is kept in /shared/jobs/ID/ (tasks.log: "
    "every task's start and end; out/LINE: what a task printed). With --storage none it is on "
    "the master's disk, and a lost master loses it. A task whose node is lost or interrupted "
    "runs again on another node (that spends no retry); --retries K runs a failing task up "
    f"to K more times; 'farm --resume ID' goes on with what is not done. Note: {ATOMIC}. "
    "Example: ec2mpi farm --retries 2 tasks.txt")


def cmd_farm(ctx, a) -> Result:
    if a.resume is not None and a.taskfile:
        raise UserError("give a task file or --resume ID, not both",
                        f"e.g. ec2mpi farm --resume {a.resume}")
    if a.retries is not None:
        _retries(a.retries)
    text, label = _read_tasks(a.taskfile) if a.resume is None else ("", "")
    name = ctx.cluster_name()
    if a.resume is not None:
        job_id = _job_id(a.resume)
        command = [AGENT, "job", "resume", job_id]
        if a.retries is not None:
            command += ["--retries", str(a.retries)]
        job = _on_master(ctx, name, shlex.join(command))
        if not job.get("resumed") and job.get("state") not in ("submitted", "running"):
            p = job.get("progress") or {}
            return Result({"cluster": name, **job},
                          f"farm {job_id} has nothing left to do ({p.get('done', '?')}/"
                          f"{p.get('total', '?')} tasks done)")
        what = f"farm {job_id} resumed: {job['left']} task(s) left" if job.get("resumed") \
            else f"farm {job_id} is still running"
    else:
        command = [AGENT, "job", "farm", "--name", label, "--retries",
                   str(a.retries or 0)]
        job = _on_master(ctx, name, shlex.join(command), stdin=text, what="start the farm")
        job_id = job["id"]
        what = f"farm {job_id}: {job['tasks']} task(s) on {name}"
    hint = f"follow it with: ec2mpi attach {job_id} -c {name}; stop it with: ec2mpi cancel " \
           f"{job_id} -c {name}; go on after a stop: ec2mpi farm --resume {job_id} -c {name}"
    ctx.say(f"ec2mpi: note: {ATOMIC}")
    if a.detach:
        return Result({"cluster": name, **job}, f"{what}; {hint}")
    ctx.say(f"ec2mpi: {what} (Ctrl-C detaches; the farm keeps running)")
    return _follow(ctx, name, job_id, hint)


def _retries(value: int) -> int:
    if value < 0:
        raise UserError(f"--retries must be 0 or more, not {value}", "e.g. --retries 2")
    return value


def _read_tasks(path: str | None) -> tuple[str, str]:
    """The task file's text and its name ('-': standard input)."""
    if not path:
        raise UserError("farm needs a task file (one shell command per line), or --resume ID",
                        "e.g. ec2mpi farm tasks.txt")
    if path == "-":
        text, label = sys.stdin.read(), "stdin"
    else:
        try:
            text, label = Path(path).read_text(), Path(path).name
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read the task file {path}: "
                            f"{getattr(err, 'strerror', None) or err}",
                            "give a text file with one shell command per line") from None
    if not parse_tasks(text):
        raise UserError(f"the task file {path} has no task (only empty or comment lines)",
                        "write one shell command per line")
    return text, label or "tasks"
