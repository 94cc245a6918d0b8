"""End to end on the local cloud: the real `ec2mpi` binary, real namespace nodes, real sshd,
real user-data and agent, real shared storage and real `mpirun` across nodes.

These need root and namespaces (CI is root); elsewhere they skip and say why.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest
from localcloud import (
    EXAMPLES,
    NEEDS_LOCAL_CLOUD,
    STATE,
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


@pytest.fixture(scope="module")
def demo():
    """A 3-node cluster with (emulated) EFS, shared by the sequence below."""
    cli("create", "e2e-demo", "--nodes", "3", "--storage", "efs", "--yes", *WAIT, timeout=180)
    yield "e2e-demo"
    cli("destroy", "e2e-demo", "--yes", check=False)


def test_the_image_lives_under_a_fresh_state_dir_and_the_host_prefix_stays_empty(
        demo, local_cloud_state):
    if local_cloud_state["fresh"] is not None:      # the suite began with no state directory
        assert not local_cloud_state["existed_before"]
        assert Path(STATE["dir"]) == local_cloud_state["fresh"]
    assert Path(STATE["dir"], "image", "venv", "bin", "ec2mpi-agent").exists()
    assert os.listdir("/opt/ec2mpi") == []           # the host sees only an empty mount point
    out = on_node(demo, "master", "command -v mpirun; ls /opt/ec2mpi/venv/bin/ec2mpi-agent").stdout
    assert out.split() == ["/opt/ec2mpi/venv/bin/mpirun", "/opt/ec2mpi/venv/bin/ec2mpi-agent"]


NAMES_PROBE = r"""
import json, socket, sys, time
other = sys.argv[1]
me = socket.gethostname()
out = {"me": me, "mine": socket.getaddrinfo(me, None, socket.AF_INET)[0][4][0],
       "fqdn": socket.getfqdn(),
       "short": socket.gethostbyname(other), "long": socket.gethostbyname(other + ".ec2.internal"),
       "ptr": socket.gethostbyaddr(socket.gethostbyname(other))[0]}
t = time.monotonic()
try:
    socket.gethostbyname("ip-172-31-250-250")
    out["unknown"] = "resolved"
except OSError:
    out["unknown"] = round(time.monotonic() - t, 2)
print(json.dumps(out))
"""

JOIN = r"""
import socket
from mpi4py import MPI
world, name = MPI.COMM_WORLD, socket.gethostname()
if world.rank == 0:                  # as mpi4py's test_dynproc testJoin does: by host name
    server = socket.socket()
    server.bind((name, 0))
    server.listen(1)
    world.send((name, server.getsockname()[1]), dest=1)
    conn = server.accept()[0]
else:
    conn = socket.create_connection(world.recv(source=0))
inter = MPI.Comm.Join(conn.fileno())
print(f"join: rank {world.rank} on {name} sees {inter.Get_remote_size()} remote", flush=True)
inter.Free()
"""


def test_nodes_resolve_names_like_on_ec2(demo, tmp_path):
    """The VPC-like resolver: own name, others' short and FQDN names, PTR; unknown names fail
    fast; MPI's Comm.Join across nodes by host name works."""
    nodes = nodes_of(demo)
    master = next(n for n in nodes if n["role"] == "master")
    worker = next(n for n in nodes if n["role"] == "worker")
    other = "ip-" + worker["private_ip"].replace(".", "-")
    for name, text in (("names_probe.py", NAMES_PROBE), ("join.py", JOIN)):
        (tmp_path / name).write_text(text)
        cli("put", "-c", demo, str(tmp_path / name), name)
    got = json.loads(on_node(demo, "master", f"python /shared/names_probe.py {other}").stdout)
    assert got["mine"] == master["private_ip"]
    assert got["me"] == "ip-" + got["mine"].replace(".", "-")
    assert got["fqdn"] == got["me"] + ".ec2.internal"
    assert got["short"] == got["long"] == worker["private_ip"]
    assert got["ptr"] == other + ".ec2.internal"
    assert isinstance(got["unknown"], float) and got["unknown"] < 3
    res = dyn_run(demo, "mpirun -np 2 --map-by node python /shared/join.py", "sees 1 remote")
    out = res.stdout
    assert sorted(line.split(" on ")[0] for line in out.splitlines() if line.startswith("join")) \
        == ["join: rank 0", "join: rank 1"] and out.count("sees 1 remote") == 2, res.stderr
    assert_ok_or_upstream_dyn_crash(res)


DYN_TRIES = 4


def dyn_run(demo, command: str, marker: str):
    """Run a program that uses MPI's dynamic processes (Join, Spawn) on the master, again (up
    to DYN_TRIES times) when it died of the known upstream crash or hung in it (30 s; a run
    takes 3-5 s) before its result (`marker`) was printed; any other failure is returned as
    it is."""
    for _ in range(DYN_TRIES):
        res = on_node(demo, "master", f"timeout -k 5 30 {command}", check=False)
        if res.returncode != 0 or marker not in res.stdout:   # none of a failed try lives on
            on_node(demo, "master", "pkill -KILL -u $(id -u) -f '[p]rted|[p]ython /shared/' "
                    "; sleep 1", check=False)
        if marker in res.stdout or not (upstream_dyn_crash(res) or res.returncode == 124):
            return res
    if upstream_dyn_crash(res):   # three times the known upstream failure, and nothing else
        pytest.skip("Open MPI's PRRTE 3.0.x dynamic-process bug (open-mpi/ompi#13521) stopped "
                    f"all {DYN_TRIES} tries of {command!r} before a result: "
                    + " / ".join(res.stderr.strip().splitlines()[:2]))
    return res


def assert_ok_or_upstream_dyn_crash(res) -> None:
    """Comm.Join and Spawn go through PRRTE 3.0.x's cross-node connect path, whose pack/unpack
    bug (open-mpi/ompi#13521) sometimes corrupts prterun's heap AFTER the ranks finished:
    the caller checked first that the work itself was done; only that known upstream crash
    may follow it, and nothing else."""
    if res.returncode != 0:   # 134: the heap corruption caught; 124: it wedged prterun
        assert res.returncode in (134, 124) and upstream_dyn_crash(res), \
            (res.returncode, res.stderr)


def upstream_dyn_crash(res) -> bool:
    """The upstream bug's own line (mpirun may even exit 0 after it lost a daemon)."""
    return "pmix_server_dyn.c at line 1113" in res.stdout + res.stderr


RMA = r"""
from array import array
from mpi4py import MPI
comm = MPI.COMM_WORLD
mine = array("i", [comm.rank * 10 + i for i in range(4)])
win = MPI.Win.Create(mine, disp_unit=mine.itemsize, comm=comm)
win.Fence()
got = array("i", [0])
right = (comm.rank + 1) % comm.size
win.Get(got, right, target=(3, 1, MPI.INT))
win.Fence()
win.Free()
print(f"rma: rank {comm.rank} got {got[0]} from {right}:",
      "OK" if got[0] == right * 10 + 3 else "WRONG", flush=True)
"""

SPAWN = r"""
import platform
from mpi4py.futures import MPIPoolExecutor
if __name__ == "__main__":
    with MPIPoolExecutor(max_workers=4) as pool:
        hosts = sorted(set(f.result() for f in [pool.submit(platform.node) for _ in range(16)]))
    print("spawn:", len(hosts), "hosts", flush=True)
"""


def quiet(stderr: str) -> list:
    """stderr lines, minus the two Open MPI 5.0.x lines no setting removes (ec2mpi.mpidefaults)."""
    import re

    from ec2mpi.mpidefaults import KNOWN_NOISE
    return [line for line in stderr.splitlines()
            if line.strip() and not any(re.match(p, line) for p in KNOWN_NOISE)]


def test_mpi_is_quiet_rma_and_spawn_across_nodes(demo, tmp_path):
    for name, text in (("rma.py", RMA), ("spawn.py", SPAWN)):
        (tmp_path / name).write_text(text)
        cli("put", "-c", demo, str(tmp_path / name), name)
    res = on_node(demo, "master", "mpirun -np 6 --map-by node python /shared/rma.py")
    assert res.stdout.count(": OK") == 6 and res.stderr == "", res.stderr   # not a line of noise
    res = dyn_run(demo, "mpirun -np 1 python /shared/spawn.py", "spawn: ")
    assert "spawn: " in res.stdout, res.stderr
    assert int(res.stdout.split("spawn:")[1].split()[0]) >= 2      # workers on other nodes too
    assert_ok_or_upstream_dyn_crash(res)
    if res.returncode == 0:
        assert quiet(res.stderr) == [], res.stderr                # not a line of noise


def test_mpirun_runs_ranks_on_distinct_hostnames(demo):
    out = cli(
        "ssh", "-c", demo, "--", "mpirun", "-np", "6", "python", "-m", "mpi4py.bench", "helloworld"
    ).stdout
    lines = [l for l in out.splitlines() if l.startswith("Hello, World!")]
    assert len(lines) == 6
    hosts = {l.rsplit(" on ", 1)[1].rstrip(".") for l in lines}
    assert len(hosts) == 3, out


def test_allreduce_over_all_ranks_through_plain_mpirun(demo):
    cli("put", "-c", demo, str(EXAMPLES / "mpi_allreduce.py"), "mpi_allreduce.py")
    out = cli(
        "ssh", "-c", demo, "--", "mpirun", "-np", "6", "python", "/shared/mpi_allreduce.py"
    ).stdout
    assert "allreduce(sum of 1..6) = 21 (expected 21): OK" in out
    assert "6 ranks on 3 hosts" in out


def test_shared_storage_efs_written_on_worker_read_on_master(demo):
    workers = [n for n in nodes_of(demo) if n["role"] == "worker"]
    on_node(demo, workers[0]["instance_id"], "echo written-on-$(hostname) > /shared/efs-probe.txt")
    out = on_node(demo, "master", "cat /shared/efs-probe.txt").stdout
    writer = workers[0]["hostname"] or "ip-" + workers[0]["private_ip"].replace(".", "-")
    assert out.strip() == f"written-on-{writer}"


def test_add_then_remove_nodes_follows_in_the_master_hostfile(demo):
    cli("add-nodes", "2", "-c", demo, "--yes", *WAIT, timeout=180)
    assert len(hostfile_hosts(demo)) == 5  # add-nodes returns once the master's hostfile lists them
    cli("remove-nodes", "1", "-c", demo, "--yes")
    hosts = hostfile_hosts(demo)               # ... and remove-nodes once it dropped the node
    assert len(hosts) == 4
    master = next(n for n in nodes_of(demo) if n["role"] == "master")
    assert hosts[0] == master["private_ip"]


def test_spot_interruption_drains_node_before_it_disappears(demo):
    victim = next(n for n in nodes_of(demo) if n["role"] == "worker" and n["state"] == "ready")
    cli("local", "interrupt", victim["instance_id"], "--grace", "10")
    wait_for(
        lambda: victim["private_ip"] not in hostfile_hosts(demo),
        30,
        what="the drained node to leave the hostfile",
    )
    # the instance is still there when the hostfile already dropped it
    assert victim["instance_id"] in cli_json("local", "status")["nodes"], (
        "node vanished before it was drained"
    )
    wait_for(lambda: victim["instance_id"] not in cli_json("local", "status")["nodes"], 60,
             what="the interrupted node to be terminated")


def test_killed_node_is_reported_lost(demo):
    victim = next(n for n in nodes_of(demo) if n["role"] == "worker" and n["state"] == "ready")
    cli("local", "kill", victim["instance_id"])
    state = wait_for(
        lambda: next(
            (
                n["state"]
                for n in nodes_of(demo)
                if n["instance_id"] == victim["instance_id"] and n["state"] == "lost"
            ),
            None,
        ),
        20,
        what="the killed node reported lost",
    )
    assert state == "lost"


def test_s3fs_shared_storage_is_real_s3fs_against_the_control_plane():
    cli("create", "e2e-s3", "--nodes", "2", "--storage", "s3fs", "--yes", *WAIT, timeout=180)
    try:
        workers = [n for n in nodes_of("e2e-s3") if n["role"] == "worker"]
        on_node("e2e-s3", workers[0]["instance_id"], "echo via-s3fs > /shared/s3-probe.txt && sync")
        out = wait_for(
            lambda: on_node(
                "e2e-s3", "master", "cat /shared/s3-probe.txt", check=False
            ).stdout.strip(),
            15,
            what="the file to appear on the master through s3fs",
        )
        assert out == "via-s3fs"
        mounts = on_node("e2e-s3", "master", "grep ' /shared ' /proc/mounts").stdout
        assert "fuse.s3fs" in mounts
    finally:
        cli("destroy", "e2e-s3", "--yes", check=False)


def test_destroy_leaves_nothing_behind(demo):
    ids = [n["instance_id"] for n in nodes_of(demo)]
    cli("destroy", demo, "--yes", timeout=180)
    leftover_ns = wait_for(
        lambda: not (set(ids) & set(cli_json("local", "status")["nodes"])) or None,
        30,
        what="the nodes' namespaces to go",
    )
    assert leftover_ns
    netns = subprocess.run(
        ["ip", "netns", "list"], check=False, capture_output=True, text=True
    ).stdout
    assert not any(i in netns for i in ids)
    from ec2mpi.localcloud.nodes import veth_name
    links = subprocess.run(["ip", "-o", "link"], check=False, capture_output=True, text=True).stdout
    assert not any(veth_name(i) in links for i in ids)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert not any(i in mounts for i in ids)
    procs = subprocess.run(
        ["ps", "-eo", "args"], check=False, capture_output=True, text=True
    ).stdout
    assert not any(f"{STATE['dir']}/nodes/{i}" in procs for i in ids)
    assert not any(Path(STATE["dir"], "nodes", i).exists() for i in ids)
    listed = cli_json("list")
    assert demo not in json.dumps(listed)
    from ec2mpi.localcloud import control
    aws = control.session(control.ensure_up())
    from ec2mpi.cluster import ClusterManager
    assert ClusterManager(aws).leftovers(demo) == []   # nothing tagged that bills or lingers
    running = aws.client("ec2").describe_instances(
        Filters=[
            {"Name": "tag:ec2mpi:cluster", "Values": [demo]},
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped"],
            },
        ]
    )["Reservations"]
    assert running == []


def test_a_crashed_local_cloud_is_detected_and_cleaned_on_next_use():
    """Kill the daemon hard (as a crash would), leaving its nodes behind; the next command cleans
    up."""
    import signal
    cli("create", "e2e-crash", "--nodes", "1", "--storage", "none", "--yes", *WAIT, timeout=180)
    status = cli_json("local", "status")
    orphans = status["nodes"]
    assert orphans
    os.kill(status["pid"], signal.SIGKILL)
    wait_for(
        lambda: not cli_json("local", "status").get("up"),
        10,
        what="the local cloud to be seen as down",
    )
    netns = subprocess.run(
        ["ip", "netns", "list"], check=False, capture_output=True, text=True
    ).stdout
    assert all(i in netns for i in orphans), "the crash should have left the nodes behind"
    res = cli("local", "up", timeout=300)
    assert "stale" in res.stderr
    fresh = cli_json("local", "status")
    assert fresh["up"] and fresh["pid"] != status["pid"] and fresh["nodes"] == []
    netns = subprocess.run(
        ["ip", "netns", "list"], check=False, capture_output=True, text=True
    ).stdout
    assert not any(i in netns for i in orphans)
    assert cli_json("list") in ([], {"clusters": []}) or "e2e-crash" not in json.dumps(
        cli_json("list")
    )
