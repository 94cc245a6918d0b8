"""Handlers of jobs: run, jobs, attach, cancel. A job belongs to the cluster: its supervisor
runs on the master; the client only starts, follows and cancels it over SSH, so closing the
laptop (or Ctrl-C) never stops a job."""
from __future__ import annotations

import json
import shlex
import signal

from .. import output
from ..errors import CloudError, UserError
from .access import _close, _open
from .context import Result

AGENT = "ec2mpi-agent"


def _on_master(ctx, name: str, command: str, stdin: str | None = None,
               what: str = "") -> dict | list:
    """Run an `ec2mpi-agent job ...` command on the master (as the cluster user), with
    `stdin` as its input: its JSON."""
    from .. import remote
    client, closers, _, _ = _open(ctx, name, None)
    try:
        status, out, err = remote.capture(client, command,
                                          stdin.encode() if stdin is not None else None)
    finally:
        _close(closers)
    if status != 0 or not out.strip():
        raise CloudError(f"the master could not {what or command.split()[2] + ' the job'}: "
                         f"{(err or out).strip()[-300:] or f'exit status {status}'}",
                         f"see the master's job log: ec2mpi logs master -c {name}")
    return json.loads(out.strip().splitlines()[-1])


def _job_id(value: str) -> str:
    if not str(value).isdigit():
        raise UserError(f"no job {value!r}", "job ids are numbers; 'ec2mpi jobs' lists them")
    return str(value)


def cmd_run(ctx, a) -> Result:
    if not a.job_command:
        raise UserError("run needs a command after '--'", "e.g. ec2mpi run -np 8 -- python app.py")
    name = ctx.cluster_name()
    submit = [AGENT, "job", "submit", "--np", str(a.np or 0), "--restarts", str(a.restarts),
              "--checkpoint-signal", a.checkpoint_signal, "--", *a.job_command]
    job = _on_master(ctx, name, shlex.join(submit))
    hint = f"follow it with: ec2mpi attach {job['id']} -c {name}; stop it with: ec2mpi cancel " \
           f"{job['id']} -c {name}"
    if a.detach:
        return Result({"cluster": name, **job}, f"job {job['id']} runs on {name}; {hint}")
    ctx.say(f"ec2mpi: job {job['id']} on {name} (Ctrl-C detaches; the job keeps running)")
    return _follow(ctx, name, job["id"], hint)


def _follow(ctx, name: str, job_id: str, hint: str) -> Result:
    """Stream the job's output until it ends; its exit status is ours. Ctrl-C (or SIGTERM)
    detaches in scripts; in the shell it asks whether to cancel the job instead."""
    from .. import remote
    client, closers, _, _ = _open(ctx, name, None)
    previous = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
    try:
        status = remote.run(client, f"{AGENT} job attach {job_id}")
    except KeyboardInterrupt:
        _close(closers)
        closers = []
        if ctx.can_ask and ctx.shell and ctx.confirm(f"\ncancel job {job_id} (no: detach)?"):
            _on_master(ctx, name, f"{AGENT} job cancel {job_id}")
            return Result({"cluster": name, "id": job_id, "state": "cancelled"},
                          f"job {job_id} cancelled", status=130)
        ctx.say(f"\nec2mpi: detached; job {job_id} keeps running on {name}; {hint}")
        return Result({"cluster": name, "id": job_id, "state": "detached"}, status=130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _close(closers)
    return Result(None, None, status=status)


def _interrupt(*_):
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def cmd_jobs(ctx, a) -> Result:
    name = ctx.cluster_name()
    jobs = _on_master(ctx, name, f"{AGENT} job list")
    rows = [[j["id"], j["kind"], j["state"] + (f" ({j['exit_status']})"
                                                 if j["exit_status"] is not None else ""),
             j["restarts"], j["nodes"], _age(j["age_s"]), _what(j)[:50]] for j in jobs]
    text = output.table(["ID", "KIND", "STATE", "RESTARTS", "NODES", "AGE", "COMMAND"], rows) \
        if rows else f"no jobs on {name} yet (start one with: ec2mpi run -- COMMAND)"
    return Result({"cluster": name, "jobs": jobs}, text)


def _what(job: dict) -> str:
    """The command; for a farm, its task file and progress (done/total, failed)."""
    p = job.get("progress") or {}
    if job.get("kind") != "farm" or "total" not in p:
        return job["command"]
    return f"{job['command']}: {p['done']}/{p['total']} done, {p['failed']} failed"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def cmd_attach(ctx, a) -> Result:
    name, job_id = ctx.cluster_name(), _job_id(a.id)
    hint = f"stop it with: ec2mpi cancel {job_id} -c {name}"
    return _follow(ctx, name, job_id, hint)


def cmd_cancel(ctx, a) -> Result:
    name, job_id = ctx.cluster_name(), _job_id(a.id)
    done = _on_master(ctx, name, f"{AGENT} job cancel {job_id}")
    return Result({"cluster": name, **done}, f"job {job_id}: {done['state']}")
