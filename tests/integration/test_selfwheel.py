"""The wheel the client builds of itself installs with pip and carries everything the nodes need."""
import base64
import hashlib
import os
import subprocess
import sys
import zipfile

from ec2mpi import __version__, selfwheel


def test_wheel_is_complete_and_recorded(tmp_path):
    name, data = selfwheel.build()
    assert name == f"ec2mpi-{__version__}-py3-none-any.whl"
    assert selfwheel.build()[1] == data                       # reproducible: same tree, same bytes
    path = tmp_path / name
    path.write_bytes(data)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert "ec2mpi/bootstrap/userdata.sh.tmpl" in names  # through the symlink
        assert "ec2mpi/aws/registry.py" in names and not any("__pycache__" in n for n in names)
        info = f"ec2mpi-{__version__}.dist-info/"
        entry = zf.read(info + "entry_points.txt").decode()
        assert (
            "ec2mpi = ec2mpi.cli:main" in entry and "ec2mpi-agent = ec2mpi.agent.main:main" in entry
        )
        assert "Root-Is-Purelib: true" in zf.read(info + "WHEEL").decode()
        for line in zf.read(info + "RECORD").decode().splitlines():
            fname, digest, size = line.split(",")
            if fname == info + "RECORD":
                continue
            body = zf.read(fname)
            want = (
                "sha256="
                + base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
            )
            assert digest == want and int(size) == len(body), fname


def test_pip_installs_it(tmp_path):
    name, data = selfwheel.build()
    whl = tmp_path / name
    whl.write_bytes(data)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", str(target), str(whl)],
                   check=True, capture_output=True, timeout=120)
    assert (target / "bin" / "ec2mpi-agent").exists() and (target / "bin" / "ec2mpi").exists()
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            (f"import sys; sys.path.insert(0, {str(target)!r}); import ec2mpi, ec2mpi.userdata;"
             "print(ec2mpi.__version__, ec2mpi.__file__, ec2mpi.userdata.TEMPLATE.exists())"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    version, where, has_template = out.stdout.split()
    assert version == __version__ and where.startswith(str(target)) and has_template == "True"
