"""Spot without fear, on the local cloud: a lost node leaves the hostfile, the cluster keeps its
size, a job with --restarts survives a killed or interrupted node, cancel and Ctrl-C leave no
process behind, and destroy stops healing first. Outcomes under generous limits; the speed
figures are bench/recovery.py's.

Needs root and namespaces (CI is root); elsewhere it skips and says why.
"""
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from localcloud import (
    EXAMPLES,
    NEEDS_LOCAL_CLOUD,
    WAIT,
    cli,
    cli_json,
    hostfile_hosts,
    local_env,  # noqa: F401 - the module's local cloud (an autouse fixture)
    nodes_of,
    on_node,
    wait_for,
)

pytestmark = NEEDS_LOCAL_CLOUD
NAME = "e2e-spot"


@pytest.fixture(scope="module")
def spot():
    """Four spot workers' worth of cluster (master on-demand), --keep-size by default."""
    cli("create", NAME, "--nodes", "4", "--storage", "efs", "--yes", *WAIT, timeout=180)
    cli("put", "-c", NAME, str(EXAMPLES / "checkpoint_restart.py"), "checkpoint_restart.py")
    yield NAME
    cli("destroy", NAME, "--yes", check=False, timeout=180)


def test_without_a_job_role_jobs_get_no_aws_credentials(spot):
    """The node role is root's (the metadata service is firewalled), and no job role was
    asked for: a job finds no credentials at all."""
    probe = Path(__file__).with_name("node_probe.py")
    cli("put", "-c", spot, str(probe), "node_probe.py")
    for node in ("master", "node-1"):
        out = json.loads(on_node(spot, node, "/opt/ec2mpi/venv/bin/python "
                                 "/shared/node_probe.py user").stdout.strip().splitlines()[-1])
        assert out["credentials"] == "none" and out["imds"] != "ok", out


def ready_workers(cluster):
    return [n for n in nodes_of(cluster) if n["role"] == "worker" and n["state"] == "ready"]


def live(cluster):
    return [n for n in nodes_of(cluster) if n["state"] not in ("lost", "invalid")]


def rank_processes(pattern, exact=False):
    """Processes of the cluster user whose command line contains (or with `exact`, is)
    `pattern`: nodes share the host's PID space, so the host sees every node's."""
    out = subprocess.run(["ps", "-ww", "-u", "ec2mpi", "-o", "pid=,args="], check=False,
                         capture_output=True, text=True).stdout
    procs = [line.strip().split(None, 1) for line in out.splitlines() if line.strip()]
    return [pid for pid, *args in procs
            if args and (args[0] == pattern if exact else pattern in args[0])]


def test_a_killed_worker_leaves_the_hostfile_and_the_cluster_keeps_its_size(spot):
    victim = ready_workers(spot)[0]
    cli("local", "kill", victim["instance_id"])
    wait_for(lambda: victim["private_ip"] not in hostfile_hosts(spot), 60,
             what="the master's hostfile to drop the killed node")
    hosts = hostfile_hosts(spot)
    out = on_node(spot, "master", f"mpirun -np {len(hosts)} --map-by node hostname").stdout
    assert sorted(out.split()) == sorted("ip-" + h.replace(".", "-") for h in hosts)
    lost = next(n for n in nodes_of(spot) if n["instance_id"] == victim["instance_id"])
    assert lost["state"] == "lost" and lost["reason"]          # status says why
    wait_for(lambda: sum(n["state"] == "ready" for n in live(spot)) == 4, 120,
             what="healing to bring the cluster back to 4 ready nodes")
    wait_for(lambda: len(hostfile_hosts(spot)) == 4, 30, what="the replacement in the hostfile")


def job_info(cluster, job_id):
    return next(j for j in cli_json("jobs", "-c", cluster)["jobs"] if j["id"] == job_id)


def checkpointing_job(cluster):
    """A job with --restarts 1 doing 12 s of work, checkpointing every second; returned once
    its first checkpoint is on shared storage: a fault from then on hits it mid-run (a notice
    takes a few seconds to reach its supervisor), and a restart has a checkpoint to resume."""
    job = cli_json("run", "-c", cluster, "--restarts", "1", "--detach", "--", "python",
                   "/shared/checkpoint_restart.py", "--seconds", "12", "--checkpoint-every", "1")
    wait_for(lambda: job_info(cluster, job["id"])["state"] == "running", 60, what="the job to run")
    wait_for(lambda: on_node(cluster, "master", f"test -s /shared/checkpoints/{job['id']}.json",
                             check=False).returncode == 0, 60, what="the job's first checkpoint")
    return job


def resumed_from_a_checkpoint(output):
    """The restart began at the step a checkpoint recorded, not from the start."""
    return re.search(r"restart 1, \d+ ranks, from step [1-9]\d* of", output) is not None


def run_interrupted(cluster, fault):
    """A checkpointing job with --restarts 1, one of its workers hit by `fault` mid-run."""
    victim = ready_workers(cluster)[0]   # a node of the job: it runs on every ready node
    job = checkpointing_job(cluster)
    cli("local", fault, victim["instance_id"])
    res = cli("attach", "-c", cluster, job["id"], check=False, timeout=300)
    return res, job_info(cluster, job["id"])


@pytest.mark.parametrize("fault", ["kill", "interrupt"])
def test_a_job_with_restarts_survives_losing_a_node(spot, fault):
    res, info = run_interrupted(spot, fault)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == "checkpoint_restart: OK"
    assert "restart 1" in res.stdout and info["state"] == "done" and info["restarts"] == 1
    assert resumed_from_a_checkpoint(res.stdout), res.stdout
    if fault == "interrupt":        # the notice came first: it checkpointed on the signal
        assert "checkpointed at step" in res.stdout and "on request" in res.stdout
    wait_for(lambda: sum(n["state"] == "ready" for n in live(spot)) == 4, 120,
             what="the cluster back to its size")


def test_cancel_leaves_no_process_on_any_node(spot):
    job = cli_json("run", "-c", spot, "--detach", "--", "python", "-c",
                   "import time; from mpi4py import MPI; time.sleep(600)  # e2e-cancel")
    wait_for(lambda: len(rank_processes("e2e-cancel")) >= 4, 60, what="the job's ranks")
    assert cli_json("cancel", "-c", spot, job["id"])["state"] == "cancelled"
    wait_for(lambda: not rank_processes("e2e-cancel") and not rank_processes("prted"), 30,
             what="every rank and daemon to go")
    info = next(j for j in cli_json("jobs", "-c", spot)["jobs"] if j["id"] == job["id"])
    assert info["state"] == "cancelled"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ssh_command_stopped_by_the_user_leaves_no_rank(spot, sig):
    marker = f"{300 + sig}"            # a distinct sleep per case
    proc = subprocess.Popen(["ec2mpi", "--local", "ssh", "-c", spot, "--",
                             f"mpirun -np 6 --map-by node sleep {marker}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(rank_processes(f"sleep {marker}", exact=True)) == 6, 60,
                 what="six ranks")
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not rank_processes(f"sleep {marker}") and not rank_processes("prted"), 30,
             what="the remote ranks to stop with the client")
    assert proc.returncode == 130


def test_a_job_outlives_the_client_that_started_it(spot):
    """Closing the laptop never stops a job: kill the attached client hard."""
    proc = subprocess.Popen(["ec2mpi", "--local", "run", "-c", spot, "--", "python",
                             "/shared/checkpoint_restart.py", "--seconds", "6"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(j["state"] == "running" for j in cli_json("jobs", "-c", spot)["jobs"]),
             60, what="the job to run")
    proc.kill()
    proc.wait(10)
    job = max(cli_json("jobs", "-c", spot)["jobs"], key=lambda j: int(j["id"]))
    res = cli("attach", "-c", spot, job["id"], check=False, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("checkpoint_restart: OK")


def test_a_lost_master_is_said_plainly_and_create_again_replaces_it_jobs_resume(spot):
    master = next(n for n in nodes_of(spot) if n["role"] == "master")
    job = checkpointing_job(spot)
    cli("local", "kill", master["instance_id"])
    wait_for(lambda: next(n for n in nodes_of(spot) if n["instance_id"] == master["instance_id"]
                          )["state"] == "lost", 90, what="status to say the master is lost")
    res = cli("ssh", "-c", spot, "--", "true", check=False)
    assert res.returncode == 1 and f"the master of {spot}" in res.stderr and "is lost" in res.stderr
    assert f"ec2mpi create {spot}" in res.stderr
    again = cli("create", spot, "--nodes", "4", "--storage", "efs", "--yes", *WAIT, timeout=180)
    assert "its lost master was replaced by" in again.stdout
    res = cli("attach", "-c", spot, job["id"], check=False, timeout=300)
    info = job_info(spot, job["id"])
    assert res.returncode == 0 and res.stdout.strip().endswith("checkpoint_restart: OK"), (
        res.stdout, info, nodes_of(spot))
    assert info["restarts"] == 1 and "master" in json.dumps(info)
    assert resumed_from_a_checkpoint(res.stdout), res.stdout


def test_destroy_stops_healing_first_and_nothing_is_relaunched(spot):
    from ec2mpi.aws.instances import Instances
    from ec2mpi.localcloud import control
    aws = control.session(control.ensure_up())
    cli("local", "kill", ready_workers(spot)[0]["instance_id"])   # healing would replace it
    report = cli_json("destroy", spot, "--yes", timeout=180)
    assert report["leftovers"] == []
    for _ in range(10):                       # and for a while after, nothing comes back
        assert Instances(aws, spot).instances(states=("pending", "running")) == []
        time.sleep(1)
    assert json.dumps(cli_json("list")).find(spot) < 0
