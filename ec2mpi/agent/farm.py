"""The task farm: `ec2mpi farm TASKFILE` runs every non-empty line of TASKFILE as a shell
command in the shared directory, one per slot, across the ready nodes; a job like any other
(`jobs`, `attach`, `cancel`, `--detach`), supervised on the master as the cluster user.

The scheduler (`Farm`, run by `ec2mpi-agent job supervise ID` for a job of kind farm) keeps
one ssh connection per ready node to a worker (farm_worker.py) that runs tasks per slot; it
rereads the hostfile every poll, puts the tasks of a lost node back without spending a
retry, and appends every event to the journal (farm_state.py), which is the truth: a task
is recorded done once, though it may run twice. docs/internals.md ("Farm") says why this
is ours and not GNU parallel, and how each rule works.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import selectors
import shlex
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("ec2mpi.agent.farm")

# Exit statuses of a task killed by SIGKILL or SIGTERM (bash's 128+N, Popen's -N).
KILLED = frozenset({137, 143, -9, -15})

from .farm_state import (  # noqa: F401 - the farm's names, in one place
    JOURNAL,
    LOCK,
    OUT,
    TASKS,
    FarmSettings,
    Journal,
    Progress,
    Task,
    TaskTable,
    parse_hostfile,
    parse_tasks,
    progress_line,
    read_journal,
    resume,
    submit,
)
from .farm_worker import worker


# -- the scheduler, on the master ---------------------------------------------------------------
class Link:
    """The connection to one node's worker."""

    def __init__(self, host: str, slots: int, proc: subprocess.Popen):
        self.host, self.slots, self.proc = host, slots, proc
        self.buf = b""
        self.ready = False
        self.usable = True            # listed in the hostfile: may get new tasks
        self.running: dict = {}       # task id -> attempt
        self.ran = 0                  # tasks finished over this connection
        self.outbox: list[bytes] = []

    @property
    def free(self) -> int:
        return self.slots - len(self.running) if self.ready and self.usable else 0


class Farm:
    """Runs a farm job to its end (see the module's docstring); returns its exit status."""

    def __init__(self, store, job_id: str, etc: Path, run_dir: Path, instance_id: str,
                 cwd: Path, python: str = "", settings: FarmSettings | None = None,
                 connect=None):
        self.store, self.id = store, job_id
        self.dir = store.dir(job_id)
        self.hostfile, self.members_file = Path(etc) / "hostfile", Path(run_dir) / "members.json"
        self.instance_id, self.cwd = instance_id, str(cwd)
        self.python = python or sys.executable
        self.settings = settings or FarmSettings.from_env()
        self.connect = connect or self.ssh_command
        self.spec = store.spec(job_id)
        self.state = store.state(job_id)
        self.links: dict = {}         # host -> Link
        self.failures: dict = {}      # host -> (connections in a row that ended, last end)
        self.hostfile_text = None
        self.selector = selectors.DefaultSelector()
        self.output_seen: set = set()  # task ids with an out/ID file
        self.tails: dict = {}         # (id, attempt) -> the last bytes it printed
        self.reruns = 0

    def ssh_command(self, host: str) -> list[str]:
        k = int(self.settings.keepalive)
        remote = shlex.join([self.python, "-m", "ec2mpi.agent.farm", "--cwd", self.cwd])
        return ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", f"ServerAliveInterval={k}", "-o", "ServerAliveCountMax=3", host,
                "exec " + remote]

    # -- output.log and state.json --------------------------------------------------------
    def say(self, text: str) -> None:
        with open(self.store.output(self.id), "ab") as out:
            out.write(text.encode() + b"\n")

    def save_progress(self) -> dict:
        hosts = [l.host for l in self.links.values() if l.ready and l.usable]
        p = self.progress.snapshot(self.table, len(hosts), self.reruns)
        self.state.progress = p
        self.state.nodes = hosts or self.state.nodes
        self.store.save(self.id, self.state)
        return p

    # -- the farm's life --------------------------------------------------------------------
    def run(self) -> int:
        with open(self.dir / LOCK, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("farm %s: another scheduler runs it", self.id)
                return 0
            return self._run()

    def _run(self) -> int:
        s = self.settings
        self.table = TaskTable.from_text((self.dir / TASKS).read_text(), self.spec.retries,
                                         s.max_lost)
        events = read_journal(self.dir / JOURNAL)
        self.journal = Journal(self.dir / JOURNAL)
        lost = self.table.replay(events)
        for event in lost:
            self.journal.add(event)
        self.journal.flush(0)
        self.reruns = sum(1 for e in events if e.get("e") == "lost") + len(lost)
        (self.dir / OUT).mkdir(exist_ok=True)
        self.output_seen = {int(p.name) for p in (self.dir / OUT).iterdir() if p.name.isdigit()}
        st = self.state
        st.host, st.pid, st.state = self.instance_id, os.getpid(), "running"
        st.started = st.started or time.time()
        self.progress = Progress()
        self.say(f"[farm] {self.table.total} tasks ({self.table.counts['done']} done already"
                 f"{f', {len(lost)} were running: they run again' if lost else ''}), retries "
                 f"{self.spec.retries}; outputs in {self.dir / OUT}")
        p = self.save_progress()
        last_line, last_save, waiting_since, told = 0.0, 0.0, None, False
        try:
            while not self.table.complete():
                now = time.monotonic()
                if self.store.cancel_requested(self.id):
                    self.stop_all("the farm was cancelled")
                    self.save_progress()
                    self.say(f"[farm] cancelled: {progress_line(self.state.progress)[7:]}")
                    return self.finish("cancelled", 143, "cancelled by the user")
                self.membership()
                if any(l.ready and l.usable for l in self.links.values()):
                    waiting_since, told = None, False
                elif waiting_since is None:
                    waiting_since = now
                elif now - waiting_since > 10 and not told:
                    told = True
                    self.say(f"[farm] waiting for a usable node (at most {s.heal_wait:.0f}s)")
                elif now - waiting_since > s.heal_wait:
                    self.stop_all("no usable node")
                    self.save_progress()
                    return self.finish("failed", 1, f"no usable node for {s.heal_wait:.0f}s; "
                                       f"resume it with: ec2mpi farm --resume {self.id}")
                self.dispatch()
                self.pump(s.poll)
                self.journal.flush()
                now = time.monotonic()
                if now - last_save >= 1.0:
                    p, last_save = self.save_progress(), now
                if now - last_line >= s.progress_every:
                    self.say(progress_line(p))
                    last_line = now
        finally:
            self.stop_all("the farm ended")
            self.journal.close()
        p = self.save_progress()
        elapsed = max(time.time() - st.started, 1e-3)
        failed = self.table.counts["failed"]
        self.say(f"[farm] {'finished' if failed else 'done'}: {p['done']}/{p['total']} done, "
                 f"{failed} failed, {self.reruns} re-run(s) after a lost node, "
                 f"{elapsed:.1f}s since the start")
        if failed:
            ids = sorted(t.id for t in self.table.tasks.values() if t.state == "failed")
            shown = ", ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else "")
            return self.finish("failed", 1, f"{failed} of {self.table.total} tasks failed "
                               f"(lines {shown}); see {self.dir / OUT}/LINE; run them again "
                               f"with: ec2mpi farm --resume {self.id}")
        return self.finish("done", 0, "")

    def finish(self, state: str, code: int, reason: str) -> int:
        self.state.state, self.state.exit_status, self.state.reason = state, code, reason
        self.state.ended = time.time()
        self.store.save(self.id, self.state)
        return code

    # -- membership --------------------------------------------------------------------------
    def members(self) -> dict:
        """private IP -> member state (live members win over a lost one's old item)."""
        try:
            items = json.loads(self.members_file.read_text())
        except (OSError, ValueError):
            return {}
        out: dict = {}
        for m in sorted(items, key=lambda m: m.get("state") not in ("lost", "draining")):
            out[m.get("private_ip")] = m.get("state")
        return out

    def membership(self) -> None:
        try:
            text = self.hostfile.read_text()
        except OSError:
            text = ""
        if text != self.hostfile_text:
            self.hostfile_text = text
            self.failures.clear()         # a new membership: give every node a new chance
        hosts = parse_hostfile(text)
        members = self.members()
        for host, link in list(self.links.items()):
            if host in hosts:
                link.usable, link.slots = True, max(1, hosts[host])
            elif members.get(host) == "draining":
                link.usable = False       # a spot notice: it finishes what it runs
            else:
                why = members.get(host)
                self.drop(link, f"node {host} {'is ' + why if why else 'left the hostfile'}")
        now = time.monotonic()
        for host, slots in hosts.items():
            count, when = self.failures.get(host, (0, 0.0))
            backoff = min(60.0, self.settings.reconnect_after * 2 ** (count - 1)) if count else 0
            if host not in self.links and now - when >= backoff:
                self.open_link(host, slots)

    def open_link(self, host: str, slots: int) -> None:
        proc = subprocess.Popen(self.connect(host), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, start_new_session=True)
        os.set_blocking(proc.stdout.fileno(), False)
        link = Link(host, max(1, slots), proc)
        self.links[host] = link
        self.selector.register(proc.stdout, selectors.EVENT_READ, link)

    def drop(self, link: Link, why: str) -> None:
        """The node is gone (or its connection is): its running tasks run again elsewhere."""
        self.links.pop(link.host, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(link.proc.stdout)
        for stream in (link.proc.stdin, link.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        with contextlib.suppress(ProcessLookupError):
            link.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            link.proc.wait(5)
        count, _ = self.failures.get(link.host, (0, 0.0))
        self.failures[link.host] = (1 if link.ran else count + 1, time.monotonic())
        lost = [e for tid, attempt in link.running.items()
                for e in [self.table.lose(tid, attempt, why)] if e]
        for tid, attempt in link.running.items():
            self.tails.pop((tid, attempt), None)
        for event in lost:
            self.journal.add(event)
            if event["e"] == "failed":
                self.report_failure(event)
        self.reruns += sum(1 for e in lost if e["e"] == "lost")
        if link.ready or lost:
            self.say(f"[farm] {why}: {len(lost)} running task(s) go back to the queue")
        log.warning("farm %s: %s (%d running tasks requeued)", self.id, why, len(lost))

    def stop_all(self, why: str) -> None:
        """End every connection: the workers see their input close and stop their tasks."""
        links, self.links = list(self.links.values()), {}
        for link in links:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(link.proc.stdout)
            with contextlib.suppress(OSError):
                link.proc.stdin.close()
        deadline = time.monotonic() + self.settings.stop_grace
        for link in links:
            try:
                link.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                link.proc.kill()
                link.proc.wait()
            with contextlib.suppress(OSError):
                link.proc.stdout.close()
            for tid, attempt in link.running.items():
                self.journal.add(self.table.lose(tid, attempt, why))

    # -- tasks -------------------------------------------------------------------------------
    def dispatch(self) -> None:
        for link in sorted(self.links.values(), key=lambda l: -l.free):
            while link.free > 0:
                task = self.table.next()
                if task is None:
                    break
                self.journal.add(self.table.start(task, link.host))
                link.running[task.id] = task.attempts
                env = {"EC2MPI_JOB_ID": self.id, "EC2MPI_TASK": task.id,
                       "EC2MPI_TASK_ATTEMPT": task.attempts}
                link.outbox.append(json.dumps({"id": task.id, "attempt": task.attempts,
                                               "cmd": task.command, "env": env}).encode()
                                   + b"\n")
            if link.outbox:
                data, link.outbox = b"".join(link.outbox), []
                try:
                    link.proc.stdin.write(data)
                    link.proc.stdin.flush()
                except OSError:
                    self.drop(link, f"the connection to node {link.host} ended")

    def pump(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            link = key.data
            try:
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.drop(link, f"the connection to node {link.host} ended")
                continue
            link.buf += chunk
            *lines, link.buf = link.buf.split(b"\n")
            for line in lines:
                try:
                    self.handle(link, json.loads(line))
                except (ValueError, KeyError, TypeError):
                    log.warning("farm %s: %s sent %r", self.id, link.host, line[:200])

    def handle(self, link: Link, msg: dict) -> None:
        if "ready" in msg:
            link.ready = True
            return
        key = (int(msg["id"]), int(msg["a"]))
        if link.running.get(key[0]) != key[1]:
            return                        # an attempt this connection no longer runs
        if "out" in msg:
            self.write_output(key, base64.b64decode(msg["out"]))
            return
        if "exit" not in msg:
            return
        del link.running[key[0]]
        link.ran += 1
        self.failures.pop(link.host, None)
        tail = self.tails.pop(key, None)
        if tail is None and key[0] in self.output_seen:    # this attempt printed nothing
            with contextlib.suppress(OSError):
                (self.dir / OUT / str(key[0])).unlink()
            self.output_seen.discard(key[0])
        code = int(msg["exit"])
        if code in KILLED:   # its node is going away (a terminated instance kills everything
            # before the connection drops): a loss, not the task's failure (bounded: max_lost)
            event = self.table.lose(key[0], key[1], f"killed by a signal on {link.host}")
        else:
            event = self.table.finish(key[0], key[1], code, float(msg.get("secs", 0)))
        self.journal.add(event)
        if event and event["e"] in ("done", "failed"):
            self.progress.count()
        if event and event["e"] in ("retry", "failed"):
            self.report_failure(event, tail)

    def write_output(self, key: tuple, data: bytes) -> None:
        first = key not in self.tails
        with open(self.dir / OUT / str(key[0]), "wb" if first else "ab") as out:
            out.write(data)
        self.output_seen.add(key[0])
        self.tails[key] = (self.tails.get(key, b"") + data)[-300:]

    def report_failure(self, event: dict, tail: bytes | None = None) -> None:
        task = self.table.tasks[event["task"]]
        last = (tail or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
        again = ", it runs again" if event["e"] == "retry" else ""
        why = f" ({event['why']})" if event.get("why") else ""
        self.say(f"[farm] task {task.id} failed with exit status {event['exit']} on "
                 f"{event.get('host', '?')}{why}, attempt {event['attempt']} (retries "
                 f"{self.spec.retries}){again}: {task.command[:80]}"
                 + (f"\n[farm]   {last[0][:200]}" if last[0] else ""))


def main(argv=None) -> int:
    """`python -m ec2mpi.agent.farm --cwd DIR`: the worker (the scheduler starts it over ssh)."""
    import argparse
    ap = argparse.ArgumentParser(prog="ec2mpi-farm-worker")
    ap.add_argument("--cwd", default=os.getcwd())
    args = ap.parse_args(argv)
    return worker(args.cwd)


if __name__ == "__main__":
    sys.exit(main())
