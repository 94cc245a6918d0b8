"""An MPI job that survives losing a node: it works in steps, checkpoints, and resumes.

Run it as a job that may restart (the job's output goes to /shared/jobs/ID/):
    ec2mpi put examples/checkpoint_restart.py
    ec2mpi run --restarts 2 -- python /shared/checkpoint_restart.py --seconds 30
It does about SECONDS of work in steps of STEP seconds. Every CHECKPOINT_EVERY seconds, and
when it gets SIGUSR1 (what `ec2mpi run` sends before a restart: a spot notice, a lost node),
rank 0 writes the state atomically to shared storage (temporary file, then rename). After a
restart (EC2MPI_RESTART=n) every rank resumes from that checkpoint, with however many ranks
the healed cluster gives it. The last line is `checkpoint_restart: OK` when the result over
all steps is exactly right.
"""
import argparse
import json
import os
import signal
import time

from mpi4py import MPI


def piece(step: int, rank: int, size: int) -> int:
    """This rank's share of step `step`: the shares of all ranks sum to step * step + 1."""
    base = (step * step + 1) // size
    return base + ((step * step + 1) % size if rank == 0 else 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="work to do (default 30)")
    ap.add_argument("--step", type=float, default=0.1, help="seconds per step (default 0.1)")
    ap.add_argument("--checkpoint-every", type=float, default=3.0)
    ap.add_argument("--checkpoint", default=None,
                    help="checkpoint file (default /shared/checkpoints/JOB.json)")
    args = ap.parse_args()
    comm, restart = MPI.COMM_WORLD, int(os.environ.get("EC2MPI_RESTART", "0"))
    job = os.environ.get("EC2MPI_JOB_ID", "manual")
    path = args.checkpoint or f"/shared/checkpoints/{job}.json"
    steps = max(1, int(args.seconds / args.step))
    asked = {"stop": False}
    signal.signal(signal.SIGUSR1, lambda *_: asked.update(stop=True))

    state = {"step": 0, "total": 0}
    if comm.rank == 0 and restart and os.path.exists(path):
        with open(path) as fh:
            state = json.load(fh)
    state = comm.bcast(state, root=0)
    if comm.rank == 0:
        print(f"checkpoint_restart: restart {restart}, {comm.size} ranks, from step "
              f"{state['step']} of {steps}", flush=True)

    def checkpoint() -> None:
        if comm.rank == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as fh:
                json.dump(state, fh)
            os.replace(tmp, path)

    last = time.monotonic()
    while state["step"] < steps:
        time.sleep(args.step)                               # the "work" of one step
        share = piece(state["step"], comm.rank, comm.size)
        state["total"] += comm.allreduce(share)
        state["step"] += 1
        stop = comm.allreduce(1 if asked["stop"] else 0) > 0   # all ranks agree
        if stop or time.monotonic() - last > args.checkpoint_every:
            checkpoint()
            last = time.monotonic()
        if stop:
            if comm.rank == 0:
                print(f"checkpoint_restart: checkpointed at step {state['step']} on request",
                      flush=True)
            return 0
    expected = sum(s * s + 1 for s in range(steps))
    ok = state["total"] == expected
    if comm.rank == 0:
        checkpoint()
        print(f"checkpoint_restart: total {state['total']} (expected {expected}) after "
              f"{restart} restart(s)", flush=True)
        print("checkpoint_restart: OK" if ok else "checkpoint_restart: WRONG", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
