"""ec2mpi quickstart on the local cloud: a real 4-node MPI cluster on this machine.

Runs the same commands a user types, and shows each one:
  create a 4-node cluster, copy an MPI program to its shared storage, run it with plain
  `mpirun` on the master (an allreduce whose result is checked), show the status table,
  then tear everything down (pass --keep to keep the cluster and try more commands).
Needs root (namespaces, a bridge, one sshd per node).
"""
import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ec2mpi(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ec2mpi", "--local", *args]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    res = subprocess.run(cmd, check=False)
    if check and res.returncode != 0:
        sys.exit(f"quickstart: '{shlex.join(cmd)}' failed with exit status {res.returncode}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="quickstart")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the cluster running afterwards")
    args = ap.parse_args()
    t0 = time.monotonic()
    was_up = (
        subprocess.run(
            ["ec2mpi", "--local", "--json", "local", "status"],
            check=False,
            capture_output=True,
            text=True,
        ).stdout.find('"up": true')
        >= 0
    )
    ec2mpi("create", args.name, "--nodes", str(args.nodes), "--yes")
    try:
        ec2mpi("put", "-c", args.name, str(HERE / "mpi_allreduce.py"), "mpi_allreduce.py")
        ec2mpi("ssh", "-c", args.name, "--", "mpirun", "-np", str(2 * args.nodes),
               "python", "/shared/mpi_allreduce.py")
        ec2mpi("status", "-c", args.name)
    finally:
        if not args.keep:
            ec2mpi("destroy", args.name, "--yes")
            if not was_up:
                ec2mpi("local", "down")
    print(f"\nquickstart finished in {time.monotonic() - t0:.0f} s.")
    if args.keep:
        print(f"""The cluster '{args.name}' is still running. Try:
  ec2mpi --local ssh -c {args.name}                      # log in to the master
  ec2mpi --local add-nodes 2 -c {args.name}              # grow it while it runs
  ec2mpi --local ssh -c {args.name} -- cat /etc/ec2mpi/hostfile
  ec2mpi --local                                          # the interactive shell
  ec2mpi --local destroy {args.name} --yes                # remove everything
  ec2mpi --local local down                               # stop the local cloud""")
    else:
        print("Everything was removed. Next: run it with --keep, or try the shell: ec2mpi --local")


if __name__ == "__main__":
    main()
