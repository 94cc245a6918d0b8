"""EC2 capacity pools, for the control-plane process only (fidelity.py, item 6).

A pool is (instance type, availability zone or "*", lifecycle "spot"|"on-demand"|"*") with a
remaining instance count; a type/AZ/lifecycle without a pool has unlimited capacity (the
default, moto's behaviour). A launch draws from its most specific pool: (type, az, lc),
then (type, az, *), (type, *, lc), (type, *, *). Each launched instance takes one unit of
it; terminating the instance gives the unit back. Setting a pool sets what remains from
then on. The table is process-wide (AZ names already say which region).

Control endpoint (served by `fidelity.RequestContextMiddleware` on the control plane's own
listeners, to clients on this host only: loopback or the listener's own address):
  GET    /_ec2mpi/capacity  -> {"pools": [{"type", "az", "lifecycle", "count"}, ...]}
  POST   /_ec2mpi/capacity  {"type": "c6i.large", "az": "us-east-1a" | null,
                             "lifecycle": "spot" | "on-demand" | null, "count": 3 | null}
                            sets one pool (null az/lifecycle: any; null count: unlimited,
                            i.e. the pool is removed); answers like GET.
  DELETE /_ec2mpi/capacity  every pool back to unlimited; answers like GET.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from collections import defaultdict
from typing import Any

LIFECYCLES = ("spot", "on-demand")
Pool = tuple[str, str, str]  # (instance type, az or "*", lifecycle or "*")


class CapacityTable:
    def __init__(self) -> None:
        self.lock = threading.RLock()  # also held across a whole fleet launch
        self._remaining: dict[Pool, int] = {}

    def set(self, itype: str, az: str | None, lifecycle: str | None, count: int | None) -> None:
        pool = (itype, az or "*", lifecycle or "*")
        with self.lock:
            if count is None:
                self._remaining.pop(pool, None)
            else:
                self._remaining[pool] = count

    def reset(self) -> None:
        with self.lock:
            self._remaining.clear()

    def pools(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{"type": t, "az": None if az == "*" else az,
                     "lifecycle": None if lc == "*" else lc, "count": n}
                    for (t, az, lc), n in sorted(self._remaining.items())]

    def pool_for(self, itype: str, az: str | None, lifecycle: str) -> Pool | None:
        """The pool a launch draws from; None: unlimited."""
        with self.lock:
            for pool in ((itype, az, lifecycle), (itype, az, "*"), (itype, "*", lifecycle),
                         (itype, "*", "*")):
                if pool in self._remaining:
                    return pool
        return None

    def remaining(self, pool: Pool | None) -> float:
        with self.lock:
            return math.inf if pool is None else self._remaining.get(pool, math.inf)

    def take(self, pool: Pool | None, n: int) -> None:
        with self.lock:
            if pool in self._remaining:
                self._remaining[pool] -= n

    def give_back(self, pool: Pool | None) -> None:
        with self.lock:
            if pool in self._remaining:
                self._remaining[pool] += 1


CAPACITY = CapacityTable()


def handle_request(method: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """The /_ec2mpi/capacity endpoint: (HTTP status, JSON answer)."""
    import json
    if method == "POST":
        try:
            req = json.loads(body or b"{}")
            itype, az, lifecycle, count = (req.get("type"), req.get("az"),
                                           req.get("lifecycle"), req.get("count"))
        except (ValueError, AttributeError):
            return 400, {"error": "body must be a JSON object"}
        if lifecycle == "*":
            lifecycle = None
        if az == "*":
            az = None
        problems = [what for what, bad in (
            ("type: an instance type", not isinstance(itype, str) or not itype),
            ("az: an availability zone or null", az is not None and not isinstance(az, str)),
            ("lifecycle: spot, on-demand or null", lifecycle not in (*LIFECYCLES, None)),
            ("count: an integer >= 0 or null (unlimited)",
             count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                    or count < 0)),
        ) if bad]
        if problems:
            return 400, {"error": "expected " + "; ".join(problems)}
        CAPACITY.set(itype, az, lifecycle, count)
    elif method == "DELETE":
        CAPACITY.reset()
    elif method != "GET":
        return 405, {"error": "GET, POST or DELETE"}
    return 200, {"pools": CAPACITY.pools()}


# ----------------------------------------------------------------------- moto patches

_ice = contextvars.ContextVar("ec2mpi_insufficient_capacity", default=False)


def _message(backend: Any, itype: str, az: str | None, lifecycle: str) -> str:
    if lifecycle == "spot":
        return "There is no Spot capacity available that matches your request."
    others = []
    try:
        zones = [z.name for z in backend.describe_availability_zones()]
    except Exception:  # noqa: BLE001
        zones = []
    for zone in zones:
        if zone != az and CAPACITY.remaining(CAPACITY.pool_for(itype, zone, lifecycle)) > 0:
            others.append(zone)
    msg = (f"We currently do not have sufficient {itype} capacity in the Availability Zone "
           f"you requested ({az}). Our system will be working on provisioning additional "
           "capacity.")
    if others:
        msg += (f" You can currently get {itype} capacity by not specifying an Availability "
                f"Zone in your request or choosing {', '.join(others)}.")
    return msg


def _subnet_az(backend: Any, subnet_id: str | None) -> str | None:
    if not subnet_id:
        return None
    try:
        return backend.get_subnet(subnet_id).availability_zone
    except Exception:  # noqa: BLE001 - moto reports the bad subnet itself
        return None


def _launch_pool(backend: Any, kwargs: dict[str, Any]) -> tuple[str, str, str]:
    """(type, az, lifecycle) of a run_instances call, decided the way moto's Instance does."""
    itype = kwargs.get("instance_type") or "m1.small"
    if kwargs.get("is_instance_type_default") and kwargs.get("launch_template"):
        with contextlib.suppress(Exception):  # a bad template: moto reports it itself
            template = backend._get_template_from_args(kwargs["launch_template"]).data
            itype = template.get("InstanceType") or itype
    subnet = kwargs.get("subnet_id") or next(
        (n["SubnetId"] for n in kwargs.get("nics") or [] if "SubnetId" in n), None)
    az = (_subnet_az(backend, subnet) or kwargs.get("placement")
          or f"{backend.region_name}a")
    spot = kwargs.get("lifecycle") == "spot" or kwargs.get("instance_market_options") == "spot"
    return itype, az, "spot" if spot else "on-demand"


def _order(fleet: Any) -> list[Any]:
    """Overrides in launch preference: Priority (lowest first), then price, then as given."""
    def key(item):
        index, spec = item
        priority = (spec.overrides or {}).get("Priority")
        try:
            price = float(spec.spot_price) if spec.spot_price else math.inf
        except ValueError:
            price = math.inf
        return (math.inf if priority is None else float(priority), price, index)
    return [spec for _, spec in sorted(enumerate(fleet.launch_specs), key=key)]


def _plan(fleet: Any, weight_to_add: float) -> tuple[dict[Any, int], float]:
    """`Fleet.get_launch_spec_counts`, capacity-aware: what the pools allow, in preference
    order (round robin for `diversified`); each pool that runs short becomes an Errors entry."""
    lifecycle = getattr(fleet, "_ec2mpi_lifecycle", "on-demand")
    errors = fleet.__dict__.setdefault("_ec2mpi_errors", {})
    planned: dict[Pool | None, int] = defaultdict(int)
    counts: dict[Any, int] = defaultdict(int)
    specs = _order(fleet)

    def pool_of(spec):
        az = _subnet_az(fleet.ec2_backend, spec.subnet_id) or f"{fleet.ec2_backend.region_name}a"
        return az, CAPACITY.pool_for(spec.instance_type, az, lifecycle)

    def available(spec) -> float:
        _, pool = pool_of(spec)
        return CAPACITY.remaining(pool) - planned[pool]

    def short(spec) -> None:
        az, _ = pool_of(spec)
        errors.setdefault((spec.instance_type, az, lifecycle), {
            "LaunchTemplateAndOverrides": {
                "LaunchTemplateSpecification": dict(spec.launch_template_spec or {}),
                "Overrides": {**(spec.overrides or {}), "AvailabilityZone": az}},
            "Lifecycle": lifecycle,
            "ErrorCode": "InsufficientInstanceCapacity",
            "ErrorMessage": _message(fleet.ec2_backend, spec.instance_type, az, lifecycle)})

    def weight(spec) -> float:
        return spec.weighted_capacity if spec.weighted_capacity > 0 else 1.0

    def take(spec, n: int) -> None:
        counts[spec] += n
        planned[pool_of(spec)[1]] += n

    left = weight_to_add
    if fleet.spot_options and fleet.spot_options.get("AllocationStrategy") == "diversified":
        active, i = list(specs), 0
        while left > 0 and active:
            spec = active[i % len(active)]
            if available(spec) >= 1:
                take(spec, 1)
                left -= weight(spec)
                i += 1
            else:
                short(spec)
                active.remove(spec)
    else:
        for spec in specs:
            if left <= 0:
                break
            need = math.ceil(left / weight(spec))
            n = int(min(need, available(spec)))
            if n < need:
                short(spec)
            if n:
                take(spec, n)
                left -= n * weight(spec)
    return dict(counts), sum(n * weight(spec) for spec, n in counts.items())


def apply_ec2() -> None:
    """Patch moto's EC2 (the caller makes this idempotent and imports moto.ec2 lazily)."""
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.fleets import Fleet, FleetsBackend
    from moto.ec2.models.instances import Instance, InstanceBackend
    from moto.ec2.responses import EC2Response
    from moto.ec2.responses.fleets import Fleets

    def get_launch_spec_counts(self, weight_to_add):
        return _plan(self, weight_to_add)

    Fleet.get_launch_spec_counts = get_launch_spec_counts

    def with_lifecycle(original, lifecycle):
        def create_requests(self, weight):
            self._ec2mpi_lifecycle = lifecycle  # what _plan draws from
            return original(self, weight)
        return create_requests

    Fleet.create_spot_requests = with_lifecycle(Fleet.create_spot_requests, "spot")
    Fleet.create_on_demand_requests = with_lifecycle(Fleet.create_on_demand_requests,
                                                     "on-demand")

    original_create_fleet = FleetsBackend.create_fleet

    def create_fleet(self, *args, **kwargs):
        with CAPACITY.lock:  # plan and launch against the same pool counts
            return original_create_fleet(self, *args, **kwargs)

    FleetsBackend.create_fleet = create_fleet

    original_create_fleet_response = Fleets.create_fleet

    def create_fleet_response(self):
        result = original_create_fleet_response(self)
        fleet = self.ec2_backend.get_fleet(result.result["FleetId"])
        errors = list(getattr(fleet, "_ec2mpi_errors", {}).values())
        if errors and fleet.fleet_type == "instant":
            result.result["Errors"] = errors
        return result

    Fleets.create_fleet = create_fleet_response

    original_run_instances = InstanceBackend.run_instances

    def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
        itype, az, lifecycle = _launch_pool(self, kwargs)
        with CAPACITY.lock:
            pool = CAPACITY.pool_for(itype, az, lifecycle)
            if CAPACITY.remaining(pool) < count:
                _ice.set(True)
                raise EC2ClientError("InsufficientInstanceCapacity",
                                     _message(self, itype, az, lifecycle))
            reservation = original_run_instances(
                self, image_id, count, user_data, security_group_names, **kwargs)
            CAPACITY.take(pool, len(reservation.instances))
            for instance in reservation.instances:
                instance._ec2mpi_pool = pool
        return reservation

    InstanceBackend.run_instances = run_instances

    original_terminate = Instance.terminate

    def terminate(self):
        was = self._state.name
        state = original_terminate(self)
        pool = self.__dict__.pop("_ec2mpi_pool", None)  # given back once
        if was != "terminated":
            CAPACITY.give_back(pool)
        return state

    Instance.terminate = terminate

    original_call_action = EC2Response.call_action

    def call_action(self):
        token = _ice.set(False)
        try:
            response = original_call_action(self)
            if _ice.get() and int(response[0]) == 400:
                # InsufficientInstanceCapacity is a server error on AWS: HTTP 500
                _, headers, body = response
                response = (500, {**headers, "status": "500"}, body)
            return response
        finally:
            _ice.reset(token)

    EC2Response.call_action = call_action
