"""The MPI program of `ec2mpi check` (ec2mpi/agent/check.py) under plain mpirun on this
machine: four ranks, each a 'node' of its own (--per-rank). No local cloud, no root needed."""
import json
import os
import subprocess
import sys


def test_the_program_under_plain_mpirun_reports_every_pair():
    """Four ranks on this machine, each its own 'node' (--per-rank): one result line with
    the allreduce, versions and the ring pairs at distance 1 and 2 (all 6 pairs of 4)."""
    from ec2mpi.agent.check import MARK
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PRTE_MCA_hwloc_default_binding_policy": "none"}
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    res = subprocess.run([mpirun, "-np", "4", "--oversubscribe", sys.executable, "-m",
                          "ec2mpi.agent.check", "--per-rank", "--parallel", "1"],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith(MARK))
    result = json.loads(line[len(MARK):])
    assert result["allreduce"] == {**result["allreduce"], "ranks": 4, "ok": True}
    assert sorted((p["a"], p["b"]) for p in result["pairs"]) == [
        (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for p in result["pairs"]:
        assert p["latency_us"] > 0 and p["bandwidth_mib_s"] > 0
    assert all(n["mpi4py"] and "Open MPI" in n["mpirun"] for n in result["nodes"])
