"""ec2mpi: MPI clusters on EC2 (spot by default), and a real local cloud to try them on."""

__version__ = "0.1.0"
