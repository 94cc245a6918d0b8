"""The task farm's scheduler (ec2mpi/agent/farm.py), without a network: the task table and its
journal as pure logic, then the real scheduler driving real worker processes. Only the
transport differs from a cluster: each "node" is a worker started directly instead of over
ssh, and a node is lost by killing its worker or dropping it from the hostfile, as the
master's watcher would."""
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ec2mpi import commands
from ec2mpi.agent import farm
from ec2mpi.agent.jobs import JobSpec, JobStore, summary
from ec2mpi.commands.farm import _read_tasks
from ec2mpi.errors import UserError

FAST = farm.FarmSettings(poll=0.05, progress_every=0.5, reconnect_after=0.2, stop_grace=3.0,
                         heal_wait=5.0)


# -- the task table -----------------------------------------------------------------------------
def test_task_ids_are_line_numbers_of_non_empty_lines():
    assert farm.parse_tasks("a\n\n  \nb c\n  # a comment\n") == [(1, "a"), (4, "b c")]


def test_a_task_is_recorded_done_once_and_late_results_change_nothing():
    t = farm.TaskTable.from_text("true\ntrue\n")
    task = t.next()
    t.start(task, "h1")
    assert t.finish(1, 1, 0)["e"] == "done"
    assert t.finish(1, 1, 0) is None            # the same result twice
    assert t.lose(1, 1, "gone") is None          # a loss after the end
    assert t.counts["done"] == 1 and not t.complete()


def test_retries_are_spent_by_failures_not_by_lost_nodes():
    t = farm.TaskTable.from_text("x\ny\n", retries=1)
    task = t.next()
    t.start(task, "h1")
    assert t.lose(1, 1, "node h1 is lost")["e"] == "lost"
    assert t.next().id == 1                      # a lost task goes first
    t.start(task, "h2")
    assert t.finish(1, 2, 3)["e"] == "retry"     # the one retry
    assert t.next().id == 2                      # a retry goes last
    t.start(t.tasks[2], "h2")
    t.finish(2, 1, 0)
    t.start(t.next(), "h2")
    assert t.finish(1, 3, 3)["e"] == "failed"
    assert t.complete() and t.counts["failed"] == 1 and t.tasks[1].attempts == 3


def test_a_task_lost_too_often_fails():
    t = farm.TaskTable.from_text("x\n", max_lost=2)
    for attempt in (1, 2):
        t.start(t.next(), "h")
        assert t.lose(1, attempt, "gone")["e"] == "lost"
    t.start(t.next(), "h")
    event = t.lose(1, 3, "gone")
    assert event["e"] == "failed" and "lost 3 times" in event["why"]


def test_replaying_the_journal_gives_the_same_state_and_what_ran_runs_again():
    t = farm.TaskTable.from_text("a\nb\nc\nd\n", retries=0)
    events = []
    for _ in range(4):
        events.append(t.start(t.next(), "h1"))
    events += [t.finish(1, 1, 0), t.finish(2, 1, 5), t.lose(3, 1, "gone")]
    events.append(t.start(t.next(), "h2"))                   # 3 again; 4 still runs
    again = farm.TaskTable.from_text("a\nb\nc\nd\n", retries=0)
    lost = again.replay(events)
    assert sorted(e["task"] for e in lost) == [3, 4]         # their scheduler is gone
    assert {i: x.state for i, x in again.tasks.items()} == {
        1: "done", 2: "failed", 3: "pending", 4: "pending"}
    assert again.tasks[3].attempts == 2 and again.tasks[3].lost == 2
    again.resume()                                            # failed ones run again
    assert sorted(x.id for x in again.tasks.values() if x.state == "pending") == [2, 3, 4]


def test_a_torn_journal_line_is_skipped_and_never_glued_to_the_next(tmp_path):
    path = tmp_path / farm.JOURNAL
    path.write_bytes(b'{"e":"start","task":1,"attempt":1}\n{"e":"done","ta')
    journal = farm.Journal(path)
    journal.add({"e": "start", "task": 2, "attempt": 1})
    journal.close()
    assert [e["task"] for e in farm.read_journal(path)] == [1, 2]


def test_progress_eta_from_the_recent_rate():
    t = farm.TaskTable.from_text("x\n" * 10)
    p = farm.Progress(window=60)
    p.began -= 10
    for _ in range(5):
        t.start(t.next(), "h")
    for i in range(1, 6):
        t.finish(i, 1, 0)
        p.count()
    snap = p.snapshot(t, nodes=2, reruns=0)
    assert (snap["done"], snap["total"], snap["running"], snap["pending"]) == (5, 10, 0, 5)
    assert snap["tasks_per_s"] == pytest.approx(0.5, rel=0.05)
    assert snap["eta_s"] == pytest.approx(10, rel=0.05)
    assert "5/10 done, 0 failed, 0 running on 2 node(s)" in farm.progress_line(snap)


# -- the scheduler with real workers --------------------------------------------------------
class Bench:
    """A job store, a hostfile and members.json as the master's watcher writes them, a work
    directory, and workers started directly (the transport a cluster replaces with ssh)."""

    def __init__(self, root: Path, hosts=("h1", "h2", "h3"), slots=2):
        self.root, self.etc, self.run_dir = root, root / "etc", root / "run"
        self.work = root / "shared"
        for d in (self.etc, self.run_dir, self.work / "results"):
            d.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(root / "jobs")
        self.set_hosts(hosts, slots)

    def set_hosts(self, hosts, slots=2, states=None):
        """As the master's watcher writes them: atomically (a reader never sees half a file;
        an empty hostfile read mid-write would drop every node)."""
        members = [{"instance_id": f"i-{h}", "private_ip": h, "state": s, "role": "worker",
                    "reason": ""} for h, s in {**{h: "ready" for h in hosts},
                                               **(states or {})}.items()]
        for path, text in ((self.run_dir / "members.json", json.dumps(members)),
                           (self.etc / "hostfile",
                            "".join(f"{h} slots={slots}\n" for h in hosts))):
            path.with_name(path.name + ".tmp").write_text(text)
            os.replace(path.with_name(path.name + ".tmp"), path)

    def submit(self, text: str, retries: int = 0) -> str:
        return self.store.new(JobSpec("", ["tasks"], kind="farm", retries=retries),
                              files={farm.TASKS: text}).id

    def farm(self, job_id: str, settings=FAST) -> farm.Farm:
        work = str(self.work)
        return farm.Farm(self.store, job_id, self.etc, self.run_dir, "i-master", self.work,
                         settings=settings,
                         connect=lambda host: [sys.executable, "-m", "ec2mpi.agent.farm",
                                               "--cwd", work])

    def journal(self, job_id: str) -> list:
        return farm.read_journal(self.store.dir(job_id) / farm.JOURNAL)

    def done_counts(self, job_id: str) -> dict:
        counts: dict = {}
        for e in self.journal(job_id):
            if e["e"] == "done":
                counts[e["task"]] = counts.get(e["task"], 0) + 1
        return counts


def atomic_tasks(n: int, sleep: float = 0.0, marker: str = "") -> str:
    """n tasks that each write results/N atomically (temporary file, then rename)."""
    nap = f"sleep {sleep}; " if sleep else ""
    return "".join(f"{nap}echo $EC2MPI_TASK {marker} > results/{i}.$$ && mv results/{i}.$$ "
                   f"results/{i}\n" for i in range(1, n + 1))


def when(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    raise AssertionError("timed out")


def processes(marker: str) -> list:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], check=False, capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -ww" not in line]


def test_a_farm_runs_every_task_once_and_records_it(tmp_path):
    bench = Bench(tmp_path)
    job = bench.submit(atomic_tasks(300))
    assert bench.farm(job).run() == 0
    assert bench.done_counts(job) == {i: 1 for i in range(1, 301)}
    assert sorted(int(p.name) for p in (bench.work / "results").iterdir()) == list(range(1, 301))
    assert (bench.work / "results" / "17").read_text().split()[0] == "17"
    st = bench.store.state(job)
    assert (st.state, st.exit_status) == ("done", 0)
    assert st.progress["done"] == st.progress["total"] == 300
    assert {e["host"] for e in bench.journal(job) if e["e"] == "done"} == {"h1", "h2", "h3"}
    log = bench.store.output(job).read_text()
    assert "[farm] done: 300/300 done, 0 failed" in log
    assert summary(bench.store, job)["kind"] == "farm"


def test_a_task_sees_its_id_and_attempt_and_its_output_is_kept(tmp_path):
    bench = Bench(tmp_path, hosts=("h1",))
    job = bench.submit("\necho task $EC2MPI_TASK attempt $EC2MPI_TASK_ATTEMPT job "
                       "$EC2MPI_JOB_ID; pwd; echo oops >&2\ntrue\n")
    assert bench.farm(job).run() == 0
    out = (bench.store.dir(job) / farm.OUT / "2").read_text().splitlines()
    assert out == [f"task 2 attempt 1 job {job}", str(bench.work), "oops"]
    assert not (bench.store.dir(job) / farm.OUT / "3").exists()   # printed nothing


@pytest.mark.parametrize("how", ["hostfile", "connection"])
def test_a_lost_node_loses_no_task_and_spends_no_retry(tmp_path, how):
    """`hostfile`: the watcher drops a lost node (members.json: lost); `connection`: its
    connection ends first (the worker dies with the node)."""
    bench = Bench(tmp_path)
    # tasks long enough that h2 is never between two of them when the farm drops it (with
    # 0.1 s tasks, CI once saw it drop h2 with nothing running, and nothing to requeue)
    job = bench.submit(atomic_tasks(36, sleep=0.4))
    f = bench.farm(job)

    def kill():
        when(lambda: len(bench.done_counts(job)) >= 10 and "h2" in f.links
             and f.links["h2"].running)
        if how == "connection":
            f.links["h2"].proc.kill()
            time.sleep(0.5)
        bench.set_hosts(("h1", "h3"), states={"h2": "lost"})

    killer = threading.Thread(target=kill)
    killer.start()
    assert f.run() == 0
    killer.join()
    events = bench.journal(job)
    lost = [e for e in events if e["e"] == "lost"]
    assert lost and {e["host"] for e in lost} == {"h2"}
    assert bench.done_counts(job) == {i: 1 for i in range(1, 37)}
    finals = [p.name for p in (bench.work / "results").iterdir() if "." not in p.name]
    assert sorted(map(int, finals)) == list(range(1, 37))
    assert not [e for e in events if e["e"] in ("retry", "failed")]
    assert "go back to the queue" in bench.store.output(job).read_text()
    rerun = {e["task"] for e in lost}
    assert all(e["host"] != "h2" for e in events if e["e"] == "done" and e["task"] in rerun)


def test_a_dead_connection_to_a_listed_node_is_reopened(tmp_path):
    bench = Bench(tmp_path, hosts=("h1", "h2"))
    job = bench.submit(atomic_tasks(40, sleep=0.1))
    f = bench.farm(job)
    first = {}

    def kill():
        when(lambda: "h2" in f.links and f.links["h2"].running)
        first["proc"] = f.links["h2"].proc
        first["proc"].kill()

    threading.Thread(target=kill).start()
    assert f.run() == 0
    assert bench.done_counts(job) == {i: 1 for i in range(1, 41)}
    late = [e for e in bench.journal(job) if e["e"] == "done" and e["host"] == "h2"]
    assert late, "h2 was used again after its connection came back"


def test_a_draining_node_finishes_its_tasks_and_gets_no_new_one(tmp_path):
    bench = Bench(tmp_path, hosts=("h1", "h2"), slots=1)
    job = bench.submit(atomic_tasks(10, sleep=0.15))
    f = bench.farm(job)

    def drain():
        when(lambda: "h2" in f.links and f.links["h2"].running)
        bench.set_hosts(("h1",), slots=1, states={"h2": "draining"})

    threading.Thread(target=drain).start()
    assert f.run() == 0
    events = bench.journal(job)
    assert not [e for e in events if e["e"] == "lost"]
    on_h2 = [e for e in events if e["e"] == "start" and e["host"] == "h2"]
    assert len(on_h2) <= 2 and bench.done_counts(job) == {i: 1 for i in range(1, 11)}


def test_retries_then_failure_then_resume(tmp_path):
    bench = Bench(tmp_path, hosts=("h1",))
    flaky = "test -e results/flaky || { touch results/flaky; exit 3; }"   # fails once
    broken = "test -e results/fixed || { echo not fixed yet; exit 4; }"
    job = bench.submit(f"{flaky}\n{broken}\ntrue\n", retries=1)
    assert bench.farm(job).run() == 1
    st = bench.store.state(job)
    assert st.state == "failed" and "1 of 3 tasks failed (lines 2)" in st.reason
    assert f"ec2mpi farm --resume {job}" in st.reason
    log = bench.store.output(job).read_text()
    assert "task 1 failed with exit status 3" in log and "it runs again" in log
    assert "task 2 failed with exit status 4" in log and "not fixed yet" in log
    assert [e["e"] for e in bench.journal(job) if e.get("task") == 2 and e["e"] != "start"] \
        == ["retry", "failed"]

    (bench.work / "results" / "fixed").touch()
    assert farm.resume(bench.store, job) == 0
    assert bench.store.state(job).state == "submitted"
    assert bench.farm(job).run() == 0
    assert bench.done_counts(job) == {1: 1, 2: 1, 3: 1}          # 1 and 3 never ran again
    assert sum(e["e"] == "start" and e["task"] == 3 for e in bench.journal(job)) == 1
    assert farm.resume(bench.store, job) == 0                    # nothing left: unchanged
    assert bench.store.state(job).state == "done"


def test_cancel_stops_every_task_and_resume_goes_on(tmp_path):
    bench = Bench(tmp_path)
    marker = f"sleep 30.{os.getpid()}"          # a command line of its own
    job = bench.submit(f"{marker}\n" * 4 + "true\n" * 6)   # 6 slots: the 6 trues run
    f = bench.farm(job)

    def cancel():
        when(lambda: len(processes(marker)) >= 4 and len(bench.done_counts(job)) == 6)
        (bench.store.dir(job) / "cancel").write_text("now")

    threading.Thread(target=cancel).start()
    began = time.monotonic()
    assert f.run() == 143
    assert time.monotonic() - began < 15
    assert bench.store.state(job).state == "cancelled"
    when(lambda: not processes(marker), timeout=10)
    assert bench.done_counts(job) == {i: 1 for i in range(5, 11)}

    (bench.store.dir(job) / farm.TASKS).write_text("true\n" * 10)   # (quicker this time)
    assert farm.resume(bench.store, job) == 0
    assert not (bench.store.dir(job) / "cancel").exists()
    assert bench.farm(job).run() == 0
    assert bench.done_counts(job) == {i: 1 for i in range(1, 11)}


def test_a_scheduler_killed_mid_farm_is_replaced_and_nothing_is_done_twice(tmp_path):
    """The master died: its scheduler is gone (SIGKILL), its workers see their input end and
    stop their tasks; the next scheduler replays the journal."""
    bench = Bench(tmp_path)
    job = bench.submit(atomic_tasks(80, sleep=0.1))
    code = (
        "import sys\nfrom pathlib import Path\nfrom ec2mpi.agent import farm\n"
        "from ec2mpi.agent.jobs import JobStore\n"
        f"root = Path({str(tmp_path)!r})\n"
        "s = farm.FarmSettings(poll=0.05)\n"
        f"f = farm.Farm(JobStore(root / 'jobs'), {job!r}, root / 'etc', root / 'run', 'i-m',"
        " root / 'shared', settings=s, connect=lambda h: [sys.executable, '-m', "
        "'ec2mpi.agent.farm', '--cwd', str(root / 'shared')])\n"
        "sys.exit(f.run())\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    when(lambda: len(bench.done_counts(job)) >= 20)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = set(bench.done_counts(job))
    assert bench.farm(job).run() == 0
    assert bench.done_counts(job) == {i: 1 for i in range(1, 81)}
    restarted = [e for e in bench.journal(job) if e.get("why") == "its scheduler was lost"]
    assert restarted and not {e["task"] for e in restarted} & done_before
    finals = [p.name for p in (bench.work / "results").iterdir() if "." not in p.name]
    assert sorted(map(int, finals)) == list(range(1, 81))   # (a killed task may leave a temp)


def test_no_usable_node_fails_the_farm_in_time_and_it_can_resume(tmp_path):
    bench = Bench(tmp_path, hosts=())
    job = bench.submit("true\n")
    settings = farm.FarmSettings(poll=0.05, heal_wait=0.5)
    assert bench.farm(job, settings).run() == 1
    assert "no usable node" in bench.store.state(job).reason
    bench.set_hosts(("h1",))
    assert farm.resume(bench.store, job) == 0
    assert bench.farm(job).run() == 0


def test_a_second_scheduler_of_the_same_farm_steps_aside(tmp_path):
    import fcntl
    bench = Bench(tmp_path)
    job = bench.submit("true\n")
    with open(bench.store.dir(job) / farm.LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert bench.farm(job).run() == 0
    assert bench.journal(job) == []


def test_the_worker_stops_its_tasks_when_its_input_ends():
    marker = f"sleep 60.{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "ec2mpi.agent.farm", "--cwd", "/"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert json.loads(proc.stdout.readline())["ready"]
    proc.stdin.write(json.dumps({"id": 1, "attempt": 1, "cmd": marker})
                     .encode() + b"\n")
    proc.stdin.flush()
    when(lambda: processes(marker))
    proc.stdin.close()
    assert proc.wait(10) == 0
    when(lambda: not processes(marker), timeout=10)


def test_tasks_do_not_source_bashrc_again_under_ssh():
    """bash started from an ssh session sources ~/.bashrc (SSH_CLIENT set, SHLVL < 2): the
    worker's environment has it applied already, so its tasks must not pay for it again."""
    env = {**os.environ, "SSH_CLIENT": "10.0.0.1 4242 22", "SHLVL": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "ec2mpi.agent.farm", "--cwd", "/"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    proc.stdin.write(json.dumps({"id": 1, "attempt": 1, "cmd": "echo ${SSH_CLIENT:-none} $SHLVL"})
                     .encode() + b"\n")
    proc.stdin.flush()
    replies = []
    while not replies or "exit" not in replies[-1]:
        replies.append(json.loads(proc.stdout.readline()))
    proc.stdin.close()
    proc.wait(10)
    out = b"".join(base64.b64decode(r["out"]) for r in replies if "out" in r).decode().split()
    assert out[0] == "none" and int(out[1]) >= 2


# -- the client -------------------------------------------------------------------------------
def test_farm_parses_its_options():
    args, cmd = commands.parse(["farm", "tasks.txt", "--retries", "2", "--detach"])
    assert (cmd.name, args.taskfile, args.retries, args.detach) == ("farm", "tasks.txt", 2, True)
    args, _ = commands.parse(["farm", "--resume", "7"])
    assert (args.taskfile, args.resume) == (None, "7")


def test_a_task_file_without_tasks_is_refused_before_anything_runs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n# only a comment\n")
    with pytest.raises(UserError, match="no task"):
        _read_tasks(str(empty))
    with pytest.raises(UserError, match="cannot read the task file"):
        _read_tasks(str(tmp_path / "missing.txt"))
    good = tmp_path / "t.txt"
    good.write_text("echo a\n\necho b\n")
    assert _read_tasks(str(good)) == ("echo a\n\necho b\n", "t.txt")


def test_farm_help_says_where_state_lives_and_to_write_outputs_atomically():
    text = commands.COMMANDS["farm"].epilog
    assert "--storage none" in text and "lost master loses it" in text
    assert "atomically" in text and "--resume" in text


def test_a_task_killed_by_a_signal_is_a_loss_and_bounded(tmp_path):
    """A terminated instance kills its tasks before its connection drops: SIGKILL/SIGTERM is
    a loss (run again, no retry spent), up to max_lost times; then it is the task's failure."""
    bench = Bench(tmp_path)
    job = bench.submit("true\nkill -9 $$\ntrue\n")
    f = bench.farm(job)
    assert f.run() == 1
    events = [e for e in bench.journal(job) if e.get("task") == 2]
    assert [e["e"] for e in events if e["e"] != "start"] == ["lost"] * 5 + ["failed"]
    assert bench.done_counts(job) == {1: 1, 3: 1}
