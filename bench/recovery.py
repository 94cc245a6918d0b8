"""How fast the local cloud heals (run as root): figures, never assertions.

With the agents' default settings (liveness every 15 s, as on AWS) on a 4-node cluster:
  kill -> hostfile healed     a worker killed without notice until the master's hostfile drops it
  kill -> N ready again       until healing has the cluster back at 4 ready nodes
  kill -> job running again   a checkpointing job with --restarts 1 until it runs again
  work lost per restart       job time between its last checkpoint and the kill (kill);
                              ~0 with a spot notice (it checkpoints on the signal)
Usage: python bench/recovery.py [--nodes 4] [--keep]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAME = "bench-recovery"


def ec2mpi(*args, check=True, timeout=300):
    res = subprocess.run(["ec2mpi", "--local", *args], capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check and res.returncode != 0:
        sys.exit(f"ec2mpi {' '.join(args)} failed: {res.stderr.strip()[-500:]}")
    return res


def data(*args):
    return json.loads(ec2mpi("--json", *args).stdout)


def until(predicate, timeout=300, step=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(step)
    sys.exit("timed out")


def workers(ready=True):
    return [n for n in data("status", "-c", NAME)["nodes"]
            if n["role"] == "worker" and (n["state"] == "ready" or not ready)]


def hostfile():
    return ec2mpi("ssh", "-c", NAME, "--", "cat /etc/ec2mpi/hostfile").stdout


def job(job_id):
    return next(j for j in data("jobs", "-c", NAME)["jobs"] if j["id"] == job_id)


def recover_job(fault: str, nodes: int) -> tuple[float, float]:
    """(fault -> running again, work lost in seconds) for one checkpointing job."""
    started = data("run", "-c", NAME, "--restarts", "1", "--detach", "--", "python",
                   "/shared/checkpoint_restart.py", "--seconds", "60", "--step", "0.1")
    until(lambda: job(started["id"])["state"] == "running")
    begun = time.monotonic()
    time.sleep(10)
    victim = workers()[0]["instance_id"]
    t0 = time.monotonic()
    ec2mpi("local", fault, victim)
    t1 = until(lambda: job(started["id"])["restarts"] == 1
               and job(started["id"])["state"] == "running")
    out = ec2mpi("attach", "-c", NAME, started["id"], timeout=600).stdout
    resumed = int(out.split("restart 1,")[1].split("from step")[1].split()[0])
    lost = max(0.0, (t0 - begun) - resumed * 0.1)   # steps of 0.1 s (plus a little overhead)
    until(lambda: len(workers()) == nodes - 1, 300)
    return t1 - t0, lost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the cluster afterwards")
    args = ap.parse_args()
    ec2mpi("create", NAME, "--nodes", str(args.nodes), "--storage", "efs", "--yes")
    ec2mpi("put", "-c", NAME, str(EXAMPLES / "checkpoint_restart.py"), "checkpoint_restart.py")
    try:
        victim = workers()[0]
        t0 = time.monotonic()
        ec2mpi("local", "kill", victim["instance_id"])
        t1 = until(lambda: victim["private_ip"] not in hostfile())
        t2 = until(lambda: len(workers()) == args.nodes - 1, 300)
        kill_run, kill_lost = recover_job("kill", args.nodes)
        notice_run, notice_lost = recover_job("interrupt", args.nodes)
        print(f"{'kill -> hostfile healed':30} {t1 - t0:6.1f} s")
        print(f"{'kill -> N ready again':30} {t2 - t0:6.1f} s   (N = {args.nodes})")
        print(f"{'kill -> job running again':30} {kill_run:6.1f} s")
        print(f"{'notice -> job running again':30} {notice_run:6.1f} s")
        print(f"{'work lost per restart (kill)':30} {kill_lost:6.1f} s   (checkpoint every 3 s)")
        print(f"{'work lost per restart (notice)':30} {notice_lost:6.1f} s")
    finally:
        if not args.keep:
            ec2mpi("destroy", NAME, "--yes", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
