"""Autostop's idle rule and its arithmetic (agent/autostop.py), with plain objects: the
registry and EC2 parts run against the local cloud in tests/integration/test_autostop.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ec2mpi.agent.autostop import Autostop, running_jobs
from ec2mpi.aws.registry import Node
from ec2mpi.config import ClusterSpec, format_duration, parse_duration
from ec2mpi.errors import UserError


class Recorder:
    """The registry and instances the rule writes to: what it asked for, in order."""

    def __init__(self, ids=("i-0000000a", "i-0000000b")):
        self.calls, self.ids = [], list(ids)

    def update_master(self, cluster, bump=False, **attrs):
        self.calls.append(("update_master", bump, attrs))

    def instances(self, states=()):
        return [type("I", (), {"instance_id": i})() for i in self.ids]

    def terminate(self, ids):
        self.calls.append(("terminate", list(ids)))


def node(iid, sessions=0, state="ready", role="worker"):
    return Node(iid, role, "172.31.0.9", "ip-172-31-0-9", 2, state=state, sessions=sessions)


def test_durations_read_like_people_write_them():
    assert [parse_duration(v) for v in ("90s", "45m", "2h", "30", "1.5h", "off", "0")] == [
        90, 2700, 7200, 1800, 5400, 0, 0]
    for bad in ("soon", "5d", "-3m", "1s", "9000h"):
        with pytest.raises(UserError):
            parse_duration(bad)
    assert [format_duration(v) for v in (30, 600, 3600, 5400)] == ["30s", "10m", "1h", "1h30m"]


def test_default_autostop_is_an_hour_with_shared_storage_and_off_without():
    assert ClusterSpec("a", storage="efs").autostop_seconds == 3600
    assert ClusterSpec("a", storage="none").autostop_seconds == 0
    assert ClusterSpec("a", storage="none", autostop="45m").autostop_seconds == 2700
    assert ClusterSpec("a", storage="efs", autostop=0).autostop_seconds == 0


def test_busy_while_a_job_runs_or_any_node_has_an_ssh_session():
    clock = [1000.0]
    reg = Recorder()
    jobs, own = [0], [0]
    auto = Autostop("c", reg, reg, lambda: own[0], lambda: jobs[0], clock=lambda: clock[0])
    members = [node("i-0000000a", role="master"), node("i-0000000b")]
    state = {"autostop": 60}
    assert auto.check(members, state) is False and state["idle_since"] == 1000
    clock[0] = 1030.0
    members[1].sessions = 1                       # someone logged in on a worker
    assert auto.check(members, state) is False and state["idle_since"] == 0
    members[1].sessions, jobs[0] = 0, 1           # a job runs
    clock[0] = 1200.0
    assert auto.check(members, state) is False and auto.idle_since is None
    jobs[0], own[0] = 0, 1                        # a session on the master itself
    assert auto.check(members, state) is False
    own[0] = 0
    assert auto.check(members, state) is False and state["idle_since"] == 1200
    members.append(node("i-0000000c", sessions=3, state="lost"))   # a lost node counts not
    clock[0] = 1259.0
    assert auto.check(members, state) is False
    assert not any(c[0] == "terminate" for c in reg.calls)


def test_idle_long_enough_sets_target_zero_first_then_terminates_every_node():
    clock = [5000.0]
    reg = Recorder()
    auto = Autostop("c", reg, reg, lambda: 0, lambda: 0, clock=lambda: clock[0])
    state = {"autostop": 30}
    auto.check([], state)
    clock[0] = 5031.0
    assert auto.check([], state) is True
    stop = [c for c in reg.calls if c[0] == "update_master" and "stopped_at" in c[2]]
    assert stop == [("update_master", True,
                     {"target": 0, "stopped_at": 5031, "idle_since": 5000})]
    assert reg.calls[-1] == ("terminate", ["i-0000000a", "i-0000000b"])
    assert reg.calls.index(stop[0]) < reg.calls.index(reg.calls[-1])
    assert auto.check([], state) is False         # once


def test_off_or_already_stopped_does_nothing():
    reg = Recorder()
    auto = Autostop("c", reg, reg, lambda: 0, lambda: 0, clock=lambda: 1e9)
    assert auto.check([], {"autostop": 0}) is False
    assert auto.check([], {"autostop": 10, "stopped_at": 5, "idle_since": 1}) is False
    assert reg.calls == []


def test_a_stale_idle_since_from_an_earlier_master_is_reused_only_if_in_the_past():
    reg = Recorder()
    auto = Autostop("c", reg, reg, lambda: 0, lambda: 0, clock=lambda: 100.0)
    state = {"autostop": 50, "idle_since": 80}
    assert auto.check([], state) is False and auto.idle_since == 80
    auto2 = Autostop("c", reg, reg, lambda: 0, lambda: 0, clock=lambda: 100.0)
    assert auto2.check([], {"autostop": 50, "idle_since": 500}) is False
    assert auto2.idle_since == 100.0


@pytest.mark.skipif(not Path("/proc/self/ns/net").exists(), reason="needs Linux /proc")
def test_running_jobs_counts_supervisors_of_the_user_in_this_network_namespace():
    me = os.getuid()
    before = running_jobs(me)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "job",
                             "supervise", "7"])
    try:
        import time
        deadline = time.time() + 5
        while running_jobs(me) == before and time.time() < deadline:
            time.sleep(0.05)
        assert running_jobs(me) == before + 1
        assert running_jobs(me + 12345) == 0
    finally:
        proc.kill()
        proc.wait()
