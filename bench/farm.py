"""The task farm's figures on the local cloud (run as root): figures, never assertions.

  throughput     `true` tasks per second: the farm's own span (first start -> last done in its
                 journal) and the client's wall clock (`ec2mpi farm` submit -> exit, ssh included)
  lost node      a worker killed while `sleep S` tasks run: the tasks that ran again (re-runs),
                 and how long the farm took compared with the same farm undisturbed
Usage: python bench/farm.py [--nodes 3] [--type c6i.large] [--tasks 200] [--sleep 0.3] [--keep]
"""
import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time

NAME = "bench-farm"


def ec2mpi(*args, check=True, timeout=600):
    res = subprocess.run(["ec2mpi", "--local", *args], capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check and res.returncode != 0:
        sys.exit(f"ec2mpi {' '.join(args)} failed: {res.stderr.strip()[-500:]}")
    return res


def data(*args):
    return json.loads(ec2mpi("--json", *args).stdout)


def journal(job_id):
    text = ec2mpi("ssh", "-c", NAME, "--", f"cat /shared/jobs/{job_id}/tasks.log").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def span(events):
    starts = [e["t"] for e in events if e["e"] == "start"]
    ends = [e["t"] for e in events if e["e"] in ("done", "failed")]
    return max(ends) - min(starts)


def farm(lines, detach=False):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("".join(line + "\n" for line in lines))
    began = time.monotonic()
    if detach:
        return data("farm", "-c", NAME, "--detach", fh.name), began
    res = ec2mpi("farm", "-c", NAME, fh.name)
    wall = time.monotonic() - began
    job_id = max(data("jobs", "-c", NAME)["jobs"], key=lambda j: int(j["id"]))["id"]
    return job_id, wall, res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--type", default="c6i.large")
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--sleep", type=float, default=0.3)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    ec2mpi("create", NAME, "--nodes", str(a.nodes), "-t", a.type, "--storage", "efs", "--yes",
           "--timeout", "300")
    slots = sum(n["slots"] for n in data("status", "-c", NAME)["nodes"])
    try:
        print(f"{a.nodes} nodes ({a.type}), {slots} slots")
        for n in (a.tasks, a.tasks * 5):
            job_id, wall, _ = farm(["true"] * n)
            inner = span(journal(job_id))
            print(f"throughput  {n:5d} x true   {n / inner:7.1f} tasks/s (farm span {inner:.2f} s)"
                  f"   {n / wall:6.1f} tasks/s (client wall clock {wall:.2f} s)")

        sleepy = [f"sleep {a.sleep}; echo $EC2MPI_TASK > r.$EC2MPI_TASK.$$ && "
                  f"mv r.$EC2MPI_TASK.$$ r.$EC2MPI_TASK" for _ in range(a.tasks)]
        job_id, _, _ = farm(sleepy)
        calm = span(journal(job_id))
        job, _ = farm(sleepy, detach=True)
        while (next(j for j in data("jobs", "-c", NAME)["jobs"] if j["id"] == job["id"])
               ["progress"] or {}).get("done", 0) < a.tasks // 3:
            time.sleep(0.2)
        victim = next(n for n in data("status", "-c", NAME)["nodes"]
                      if n["role"] == "worker" and n["state"] == "ready")
        ec2mpi("local", "kill", victim["instance_id"])
        ec2mpi("attach", "-c", NAME, job["id"], check=False)
        events = journal(job["id"])
        lost = [e for e in events if e["e"] == "lost"]
        done = collections.Counter(e["task"] for e in events if e["e"] == "done")
        detected = min((e["t"] for e in lost), default=None)
        print(f"lost node   {len(lost)} task re-run(s) of {a.tasks} (the victim's "
              f"{victim['slots']} slot(s)); done once each: {set(done.values()) == {1}}; "
              f"farm {span(events):.1f} s vs {calm:.1f} s undisturbed"
              + (f"; lost tasks requeued {detected - min(e['t'] for e in events):.1f} s into "
                 "the farm" if detected else ""))
    finally:
        if not a.keep:
            ec2mpi("destroy", NAME, "--yes", check=False)


if __name__ == "__main__":
    main()
