"""Check an MPI cluster: every rank reports its host, then an allreduce is verified.

    mpirun -np 8 python mpi_allreduce.py
"""
import socket
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
hosts = comm.gather(socket.gethostname(), root=0)
total = comm.allreduce(rank + 1, op=MPI.SUM)
expected = size * (size + 1) // 2
if rank == 0:
    print(f"{size} ranks on {len(set(hosts))} hosts: {', '.join(sorted(set(hosts)))}")
    print(
        f"allreduce(sum of 1..{size}) = {total} (expected {expected}): "
        f"{'OK' if total == expected else 'WRONG'}"
    )
sys.exit(0 if total == expected else 1)
