"""What one launch asks and gets, and how it reads EC2's refusals: the LaunchRequest and
LaunchResult of Instances.launch_some (aws/instances.py), the capacity pools that refused,
and the wait while a new instance profile propagates (IAM is eventually consistent)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import explain_client_error

# EC2's answers that mean "no capacity for this pool now": try the other pools.
CAPACITY_ERRORS = frozenset({"InsufficientInstanceCapacity", "InsufficientHostCapacity",
                             "MaxSpotInstanceCountExceeded", "SpotMaxPriceTooLow",
                             "Unsupported"})


@dataclass(frozen=True)
class LaunchRequest:
    """What one launch is: N instances of the cluster's template, over types and subnets."""
    launch_template_id: str
    count: int
    token: str                  # idempotency: instances are tagged with it
    instance_types: tuple
    subnets: tuple              # describe_subnets entries, in preference order
    spot: bool = True
    role: str = "worker"
    placement_group: str | None = None
    # pools to leave out while others remain: (type, AZ) or (type, AZ, lifecycle)
    avoid: frozenset = frozenset()
    spot_fallback: bool = False      # spot ran out everywhere: launch the rest on-demand


@dataclass
class LaunchResult:
    """What one launch got: every instance of its token, and the pools that refused it."""
    ids: list                  # every instance of the launch token, in launch order
    asked: int
    new: list = field(default_factory=list)        # launched by this call
    on_demand: list = field(default_factory=list)  # of `new`: on-demand because spot ran out
    failed: dict = field(default_factory=dict)     # (type, AZ, lifecycle) -> (code, message)
    tried: list = field(default_factory=list)      # (type, AZ, lifecycle) offered, in order

    @property
    def missing(self) -> int:
        return max(0, self.asked - len(self.ids))

    @property
    def capacity_failed(self) -> list:
        """The pools that refused for capacity (what is avoided for a while)."""
        return [p for p, (code, _) in self.failed.items() if code in CAPACITY_ERRORS]


def describe_pools(pools) -> str:
    """'c6i.large, c5.large in us-east-1a, us-east-1b (spot)', per lifecycle."""
    parts = []
    for lifecycle in ("spot", "on-demand"):
        mine = [p for p in pools if p[2] == lifecycle]
        if mine:
            types = ", ".join(dict.fromkeys(p[0] for p in mine))
            zones = ", ".join(dict.fromkeys(p[1] for p in mine if p[1])) or "any zone"
            parts.append(f"{types} in {zones} ({lifecycle})")
    return "; ".join(parts) or "no pool"


PROFILE_RETRIES = (
    6  # IAM is eventually consistent: a fresh instance profile may be unknown to EC2 for seconds
)


def _profile_not_ready(code: str, message: str) -> bool:
    return code == "InvalidParameterValue" and "iam instance profile" in message.lower()


class ProfileNotReady(Exception):
    """EC2 does not see the cluster's new instance profile yet (IAM is eventually consistent)."""


def while_profile_propagates(call, attempts: int = PROFILE_RETRIES):
    """call(attempt) until it stops raising ProfileNotReady, backing off; the last try's
    refusal is worded like any other."""
    for attempt in range(attempts):
        try:
            return call(attempt)
        except ProfileNotReady as err:
            if attempt == attempts - 1:
                raise explain_client_error(
                    "ec2:CreateFleet",
                    _Refusal(
                        "InvalidParameterValue", "the instance profile is not visible to EC2 yet"
                    ),
                ) from err
            time.sleep(min(8.0, 1.0 * 2 ** attempt))


class _Refusal:
    """Lets explain_client_error word a fleet's per-launch errors like any ClientError."""

    def __init__(self, code: str, message: str):
        self.response = {"Error": {"Code": code, "Message": message}}


class _CapacityRefused(Exception):
    """A whole CreateFleet refused for capacity (not per pool in Errors)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _pool(pair, lifecycle: str) -> tuple:
    """(type, subnet) -> the (type, AZ, lifecycle) capacity pool it launches into."""
    return (pair[0], pair[1].get("AvailabilityZone", ""), lifecycle)


def _names(overrides: dict, pair) -> bool:
    """Does a fleet error's Overrides name this (type, subnet)? (AWS echoes what was sent:
    the type and subnet, sometimes the AZ.)"""
    itype, sub = pair
    if overrides.get("InstanceType") not in (None, itype):
        return False
    if "SubnetId" in overrides:
        return overrides["SubnetId"] == sub.get("SubnetId")
    if "AvailabilityZone" in overrides:
        return overrides["AvailabilityZone"] == sub.get("AvailabilityZone")
    return True


def shortfall(result: LaunchResult):
    """The CloudError for a launch that got fewer instances than asked: EC2's reason, and
    every pool tried."""
    codes = [code for code, _ in result.failed.values()]
    code = next((c for c in codes if c not in CAPACITY_ERRORS), None) or \
        (codes[0] if codes else "InsufficientInstanceCapacity")
    message = next((m for c, m in result.failed.values() if c == code), "")
    return explain_client_error("ec2:CreateFleet", _Refusal(
        code, f"launched {len(result.ids)} of {result.asked}; tried "
              f"{describe_pools(result.tried)}" + (f": {message}" if message else "")))
