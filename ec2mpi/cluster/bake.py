"""bake-image: bootstrap/bake-ami.sh as a command, leaving nothing behind but the image.

Why: a stock image installs Python, Open MPI and the agent at every boot (minutes on AWS);
a baked one boots in seconds. One builder instance runs the bake through user-data (no
credentials in it: a role that reads the one wheel object and writes the one status
object); the client follows the status object, makes the image, waits for it, and removes
the builder, its role and profile and its objects on success, failure or Ctrl-C, then
checks that they are gone.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field

from .. import __version__, selfwheel
from ..aws.iam import BUILDER, NodeRole
from ..aws.images import Images, builder_policy
from ..aws.instances import Instances
from ..aws.network import Network
from ..aws.templates import Templates
from ..config import DEFAULT_IMAGE_PARAMETERS, NODE_PREFIX
from ..errors import CloudError, UserError, WaitTimeout
from ..userdata import BakeParams, render_bake

STATUS = "bake-status.json"
GONE = ("shutting-down", "terminated", "stopping", "stopped")


@dataclass
class BakeResult:
    image_id: str
    name: str
    version: str
    region: str
    base_image: str
    instance_type: str
    builder: str
    bake_id: str
    seconds: float = 0.0
    leftovers: list = field(default_factory=list)


def image_name(version: str, when: float | None = None) -> str:
    """ec2mpi-VERSION-YYYYmmddHHMMSS, in the characters AMI names allow."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(when))
    return re.sub(r"[^A-Za-z0-9()\[\]./'@_-]", "-", f"ec2mpi-{version}-{stamp}")


class Bake:
    """One run of bake-image: the state its steps hand to each other."""

    def __init__(self, ops, image_id: str | None, instance_type: str, subnet_id: str | None,
                 timeout: float, poll: float = 3.0):
        self.ops, self.aws = ops, ops.aws
        self.bake_id = f"bake-{uuid.uuid4().hex[:8]}"
        self.base, self.instance_type, self.subnet_id = image_id, instance_type, subnet_id
        self.timeout, self.poll = timeout, poll
        self.images = Images(self.aws, self.bake_id)
        self.role = NodeRole(self.aws, self.bake_id, BUILDER)
        self.wheel_key = self.status_key = self.builder = self.image_id = self.name = ""
        self.image: dict = {}
        self.subnet = ""
        self.done = False

    # -- before anything is made ------------------------------------------------------
    def check(self) -> None:
        templates = Templates(self.aws, self.bake_id)
        arch = templates.architecture([self.instance_type])   # unknown type: UserError
        if not self.base:
            if arch not in DEFAULT_IMAGE_PARAMETERS:
                raise UserError(f"no default image for {arch} instance type "
                                f"{self.instance_type}", "pass --image with an AMI for it")
            self.base = templates.resolve_image(None, DEFAULT_IMAGE_PARAMETERS[arch])
        self.image = self.images.image(self.base) or {}
        if not self.image:
            raise UserError(f"image {self.base} does not exist in region {self.aws.region}",
                            "pass --image with an AMI id of that region, or leave it out for "
                            "the latest Amazon Linux 2023")
        subnets = Network(self.aws, self.bake_id).subnets(
            [self.subnet_id] if self.subnet_id else ())
        self.subnet = subnets[0]["SubnetId"]

    # -- the steps -----------------------------------------------------------------------
    def steps(self) -> list:
        return [("ec2mpi wheel uploaded", self.upload), ("builder role", self.builder_role),
                ("builder launched", self.launch), ("baked", self.wait_baked),
                ("image created", self.create_image), ("image available", self.available)]

    def upload(self) -> None:
        ks = self.ops.keystore
        ks.ensure_bucket()
        name, data = selfwheel.build()
        self.wheel_key = ks.put_wheel(self.bake_id, name, data)
        self.status_key = ks.prefix(self.bake_id) + STATUS

    def builder_role(self) -> None:
        self.profile_arn = self.role.ensure(builder_policy(
            self.ops.keystore.bucket, self.wheel_key, self.status_key))[0]
        self.role.wait_usable()

    def launch(self) -> str:
        user_data = render_bake(BakeParams(
            region=self.aws.region, bucket=self.ops.keystore.bucket,
            account=self.aws.account_id(), wheel_key=self.wheel_key,
            status_key=self.status_key, version=__version__, prefix=NODE_PREFIX))
        self.builder = self.images.launch_builder(self.image, self.instance_type, self.subnet,
                                                  self.profile_arn, user_data)
        return f"builder {self.builder} launched ({self.instance_type}, {self.base})"

    def wait_baked(self) -> str:
        started = time.monotonic()
        total = len(self.steps())
        while True:
            raw = self.ops.keystore.get_optional(self.bake_id, STATUS)
            status = json.loads(raw) if raw else {"state": "booting", "step": "booting"}
            elapsed = time.monotonic() - started
            if status["state"] == "done":
                return f"baked in {elapsed:.0f} s"
            if status["state"] == "failed":
                raise CloudError(f"the bake on builder {self.builder} failed at step: "
                                 f"{status['step']}", "its log was /var/log/ec2mpi/bake.log "
                                 "on the builder; fix the cause (e.g. --image, "
                                 "--instance-type) and run bake-image again")
            state = self.images.state(self.builder)
            if state in GONE:
                raise CloudError(f"builder {self.builder} is {state} before the bake finished",
                                 "run bake-image again; see its console output if it recurs")
            if elapsed > self.timeout:
                raise WaitTimeout(f"the bake did not finish in {self.timeout:.0f} s (last "
                                  f"step: {status['step']})", "pass a longer --timeout, or "
                                  "a larger --instance-type")
            self.ops.say(3, total, f"baking ({elapsed:.0f} s): {status['step']}")
            time.sleep(self.poll)

    def create_image(self) -> str:
        self.name = image_name(__version__)
        self.image_id = self.images.create_image(self.builder, self.name, __version__)
        return f"image {self.image_id} created"

    def available(self) -> None:
        total = len(self.steps())
        self.images.wait_available(self.image_id, self.timeout,
                                   lambda m: self.ops.say(5, total, m), self.poll)
        self.images.tag_snapshots(self.image_id,
                                  self.images.image_tags(self.builder, __version__))
        self.done = True

    # -- always ------------------------------------------------------------------------
    def cleanup(self) -> list:
        """Terminate the builder, delete its role, profile and objects (and a half-made
        image); then what is still there (each step is tried even if another failed)."""
        errors = []

        def attempt(what, call):
            try:
                call()
            except Exception as err:  # noqa: BLE001 - every part must be tried
                errors.append(f"{what}: {err}")

        if self.image_id and not self.done:
            attempt("image", lambda: self.images.deregister(self.image_id))
        if self.builder:
            insts = Instances(self.aws, self.bake_id)
            attempt("builder", lambda: insts.terminate([self.builder]))
            attempt("builder", lambda: insts.wait_terminated([self.builder], timeout=600))
        attempt("role", self.role.delete)
        attempt("objects", lambda: self.ops.keystore.delete_prefix(self.bake_id))
        return errors + self.leftovers()

    def leftovers(self) -> list:
        """The bake's own cleanup check: its builder, role, profile and objects."""
        left = [f"instance/{i}" for i in self.images.tagged_bake()]
        left += [f"iam {what}/{self.role.name}" for what, there in self.role.exists().items()
                 if there]
        ks = self.ops.keystore
        if ks.exists():
            left += [f"s3://{ks.bucket}/{k}" for k in ks.list(self.bake_id)]
        return left


def bake(ops, image_id: str | None, instance_type: str, subnet_id: str | None,
         timeout: float, poll: float = 3.0) -> BakeResult:
    """Bake an image; the builder and everything it needed are gone when this returns or
    raises (a cleanup that leaves something is reported in `leftovers`, or raised)."""
    from .model import run_steps
    started = time.monotonic()
    region = ops.preflight()
    run = Bake(ops, image_id, instance_type, subnet_id, timeout, poll)
    run.check()
    try:
        run_steps(run.steps(), ops.say)
    finally:
        ops.say(len(run.steps()), len(run.steps()), "removing the builder, its role and objects")
        left = run.cleanup()
        if left and not run.done:
            ops.say(0, 0, "bake-image could not remove: " + "; ".join(left))
    return BakeResult(image_id=run.image_id, name=run.name, version=__version__,
                      region=region, base_image=run.base, instance_type=instance_type,
                      builder=run.builder, bake_id=run.bake_id,
                      seconds=round(time.monotonic() - started, 1), leftovers=left)
