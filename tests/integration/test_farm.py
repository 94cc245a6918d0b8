"""The task farm on the local cloud: `ec2mpi farm` spreads a task file over the ready nodes,
and a worker killed in the middle loses no task: every task is recorded done once and every
task's output file exists. Failed tasks retry, then resume; cancel leaves no task behind.

Needs root and namespaces (CI is root); elsewhere it skips and says why.
"""
import collections
import json
import os
import subprocess

import pytest
from localcloud import (
    NEEDS_LOCAL_CLOUD,
    WAIT,
    cli,
    cli_json,
    local_env,  # noqa: F401 - the module's local cloud (an autouse fixture)
    nodes_of,
    on_node,
    wait_for,
)

pytestmark = NEEDS_LOCAL_CLOUD
NAME = "e2e-farm"


@pytest.fixture(scope="module")
def cluster():
    """Three nodes of two slots each: six tasks at a time."""
    cli("create", NAME, "--nodes", "3", "--storage", "efs", "-t", "c6i.large", "--yes", *WAIT,
        timeout=180)
    yield NAME
    cli("destroy", NAME, "--yes", check=False, timeout=180)


def job_of(cluster, job_id):
    return next(j for j in cli_json("jobs", "-c", cluster)["jobs"] if j["id"] == job_id)


def journal(cluster, job_id):
    text = on_node(cluster, "master", f"cat /shared/jobs/{job_id}/tasks.log").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def task_processes(pattern):
    """The cluster user's processes running `pattern`, on every node (they share the host's
    PID space)."""
    out = subprocess.run(["ps", "-ww", "-u", "ec2mpi", "-o", "args="], check=False,
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip() == pattern]


def test_a_farm_survives_a_killed_worker_and_records_every_task_done_once(cluster, tmp_path):
    on_node(cluster, "master", "mkdir -p /shared/results")
    tasks = tmp_path / "sweep.txt"
    tasks.write_text("".join(f"sleep 0.3; echo {i} $EC2MPI_TASK_ATTEMPT $(hostname) > "
                             f"results/{i}.$$ && mv results/{i}.$$ results/{i}\n"
                             for i in range(1, 201)))
    job = cli_json("farm", "-c", cluster, "--detach", str(tasks))
    assert job["tasks"] == 200
    wait_for(lambda: (job_of(cluster, job["id"])["progress"] or {}).get("done", 0) >= 50, 60,
             interval=0.3, what="a quarter of the tasks done")
    victim = next(n for n in nodes_of(cluster) if n["role"] == "worker" and n["state"] == "ready")
    cli("local", "kill", victim["instance_id"])

    res = cli("attach", "-c", cluster, job["id"], check=False, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[farm] done: 200/200 done, 0 failed" in res.stdout
    assert [line for line in res.stdout.splitlines()            # said, with the node's address
            if victim["private_ip"] in line and "go back to the queue" in line]
    events = journal(cluster, job["id"])
    done = collections.Counter(e["task"] for e in events if e["e"] == "done")
    assert done == {i: 1 for i in range(1, 201)}                 # recorded done exactly once
    lost = [e for e in events if e["e"] == "lost"]
    assert lost and {e["host"] for e in lost} == {victim["private_ip"]}
    assert not [e for e in events if e["e"] in ("retry", "failed")]   # no retry was spent
    files = on_node(cluster, "master", "ls /shared/results").stdout.split()
    assert sorted(int(f) for f in files if f.isdigit()) == list(range(1, 201))
    info = job_of(cluster, job["id"])
    assert info["kind"] == "farm" and info["state"] == "done"
    assert (info["progress"]["done"], info["progress"]["total"]) == (200, 200)
    print(f"\nfarm: a killed worker cost {len(lost)} task re-run(s)")


def test_failed_tasks_retry_and_resume_goes_on_with_what_is_not_done(cluster, tmp_path):
    tag = f"r{os.getpid()}"
    tasks = tmp_path / "flaky.txt"
    tasks.write_text(f"test -e {tag}.once || {{ touch {tag}.once; exit 3; }}\n"
                     f"test -e {tag}.fixed || {{ echo not fixed yet; exit 4; }}\n"
                     "true\n")
    res = cli("farm", "-c", cluster, "--retries", "1", str(tasks), check=False, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "task 1 failed with exit status 3" in res.stdout and "it runs again" in res.stdout
    assert "task 2 failed with exit status 4" in res.stdout and "not fixed yet" in res.stdout
    assert "write outputs atomically" in res.stderr
    job_id = max(cli_json("jobs", "-c", cluster)["jobs"], key=lambda j: int(j["id"]))["id"]
    info = job_of(cluster, job_id)
    assert info["state"] == "failed" and "1 of 3 tasks failed (lines 2)" in info["reason"]

    on_node(cluster, "master", f"touch /shared/{tag}.fixed")
    res = cli("farm", "-c", cluster, "--resume", job_id, check=False, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[farm] done: 3/3 done, 0 failed" in res.stdout
    done = collections.Counter(e["task"] for e in journal(cluster, job_id) if e["e"] == "done")
    assert done == {1: 1, 2: 1, 3: 1}


def test_cancel_stops_every_task_on_every_node(cluster, tmp_path):
    sleeper = f"sleep 300.{os.getpid()}"
    tasks = tmp_path / "long.txt"
    tasks.write_text(f"{sleeper}\n" * 12)
    job = cli_json("farm", "-c", cluster, "--detach", str(tasks))
    wait_for(lambda: len(task_processes(sleeper)) >= 4, 60, what="tasks on two nodes at least")
    assert cli_json("cancel", "-c", cluster, job["id"])["state"] == "cancelled"
    wait_for(lambda: not task_processes(sleeper), 30, what="every task to stop")
    assert job_of(cluster, job["id"])["state"] == "cancelled"
