"""The instances of one cluster: launch (one call for N nodes), list, tag, terminate, and
the leftovers a launch can leave (fleets, spot requests, volumes).

Why one call per launch: client cost stays O(1) in the node count. Why our own launch
token on top of ClientToken: an emulator (moto) ignores ClientToken, and a resumed
create must not double the nodes on any endpoint, so we also tag every instance with
the token and only launch what is missing.

Capacity failover (`launch_some`): when EC2 launches fewer than asked and says why with a
capacity error (CAPACITY_ERRORS, as ParallelCluster's fast failover counts them) for some
(type, AZ, lifecycle) pools, the rest is asked for again without those pools, until the
count is met or every pool failed; then, if the request allows it, on-demand. Each retry
is one more call for all the missing instances, so the cost stays O(1) in the node count.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from ..config import TAG_CLUSTER, TAG_LAUNCH, TAG_ROLE, ResourceNames, cluster_tags
from ..errors import UserError, explain_client_error
from .session import AwsSession, ClientError, error_code

LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")


@dataclass
class Instance:
    instance_id: str
    instance_type: str
    state: str
    lifecycle: str          # spot | on-demand
    private_ip: str
    public_ip: str
    launch_time: float
    tags: dict
    zone: str = ""
    image: str = ""

    @classmethod
    def from_api(cls, d: dict) -> Instance:
        lt = d.get("LaunchTime")
        return cls(d["InstanceId"], d.get("InstanceType", ""), d.get("State", {}).get("Name", ""),
                   "spot" if d.get("InstanceLifecycle") == "spot" else "on-demand",
                   d.get("PrivateIpAddress", ""), d.get("PublicIpAddress", ""),
                   lt.timestamp() if hasattr(lt, "timestamp") else 0.0,
                   {t["Key"]: t["Value"] for t in d.get("Tags", [])},
                   d.get("Placement", {}).get("AvailabilityZone", ""), d.get("ImageId", ""))


def _ip_key(ip: str) -> tuple:
    """Numeric order for addresses: 172.31.0.9 before 172.31.0.10."""
    return tuple(int(x) for x in ip.split(".") if x.isdigit())


from .launch import (  # noqa: F401 - launch_some's names, in one place
    CAPACITY_ERRORS,
    PROFILE_RETRIES,
    LaunchRequest,
    LaunchResult,
    ProfileNotReady,
    _CapacityRefused,
    _names,
    _pool,
    _profile_not_ready,
    _Refusal,
    describe_pools,
    shortfall,
    while_profile_propagates,
)


class Instances:
    """Launch, list, tag and terminate the instances of one cluster."""

    def __init__(self, session: AwsSession, cluster: str):
        self.session = session
        self.ec2 = session.client("ec2")
        self.cluster = cluster
        self.names = ResourceNames(cluster)

    def instances(
        self, states=LIVE_STATES, launch_token: str | None = None, ids=None
    ) -> list[Instance]:
        """This cluster's instances by tag (oldest first), optionally of one launch."""
        filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        if launch_token:
            filters.append({"Name": f"tag:{TAG_LAUNCH}", "Values": [launch_token]})
        kwargs = {"InstanceIds": list(ids)} if ids else {}
        out = []
        try:
            for page in self.ec2.get_paginator("describe_instances").paginate(
                Filters=filters, **kwargs
            ):
                for res in page["Reservations"]:
                    out += [Instance.from_api(i) for i in res["Instances"]]
        except ClientError as err:
            if error_code(err) == "InvalidInstanceID.NotFound":
                return []
            raise explain_client_error("ec2:DescribeInstances", err) from err
        return sorted(out, key=lambda i: (i.launch_time, _ip_key(i.private_ip), i.instance_id))

    def launch(self, req: LaunchRequest) -> list[str]:
        """Make sure `req.count` instances of launch `req.token` exist (launch_some), or
        raise a CloudError naming the pools that refused. Returns all instance ids of the
        launch, in launch order."""
        result = self.launch_some(req)
        if result.missing:
            raise shortfall(result)
        return result.ids

    def launch_some(self, req: LaunchRequest) -> LaunchResult:
        """Launch what capacity allows of `req.count` instances of launch `req.token`.

        One CreateFleet for all the missing instances over every (type, subnet) pool;
        when EC2 launches fewer, again for the rest without the pools that refused for
        capacity, until the count is met or every pool failed; then, with
        `req.spot_fallback`, the same on-demand. Instances already tagged with the token
        count (a resumed launch). Any other refusal that launches nothing raises."""
        have = self.instances(launch_token=req.token)
        result = LaunchResult([i.instance_id for i in have], req.count)
        lifecycles = ["spot", "on-demand"] if req.spot and req.spot_fallback else \
            ["spot" if req.spot else "on-demand"]
        for lifecycle in lifecycles:
            pools = self._pools(req, lifecycle)
            while result.missing:
                offer = [p for p in pools if _pool(p, lifecycle) not in result.failed]
                if not offer:
                    break
                self._launch_once(req, lifecycle, offer, result)
        return result

    def _pools(self, req: LaunchRequest, lifecycle: str) -> list:
        """(type, subnet) pairs in preference order, without the avoided ones while others
        remain."""
        subnets = req.subnets[:1] if req.placement_group else req.subnets  # a cluster PG is one AZ
        pools = [(itype, sub) for itype in req.instance_types for sub in subnets]
        kept = [(t, sub) for t, sub in pools
                if not {(t, sub.get("AvailabilityZone", "")), (t, ""),
                        (t, sub.get("AvailabilityZone", ""), lifecycle)} & req.avoid]
        return kept or pools

    def _launch_once(self, req: LaunchRequest, lifecycle: str, offer: list,
                     result: LaunchResult) -> None:
        """One CreateFleet for everything missing over `offer`; records what it launched and
        which pools refused. Each call launches something or marks a pool failed."""
        missing, spot = result.missing, lifecycle == "spot"
        for p in offer:
            if _pool(p, lifecycle) not in result.tried:
                result.tried.append(_pool(p, lifecycle))
        kwargs = self._fleet_request(req, missing, "", offer, spot)
        digest = hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:8]
        # a retry with other pools is another request: on AWS, another ClientToken
        kwargs["ClientToken"] = f"{req.token}-{len(result.ids)}-{digest}"[:64]
        try:
            resp = while_profile_propagates(lambda attempt: self._create_fleet(kwargs, attempt))
        except _CapacityRefused as err:
            for p in offer:
                result.failed[_pool(p, lifecycle)] = (err.code, err.message)
            return
        new = [iid for grp in resp.get("Instances", []) for iid in grp.get("InstanceIds", [])]
        result.ids += new
        result.new += new
        if req.spot and not spot:
            result.on_demand += new
        errors = resp.get("Errors") or []
        other = next(((e.get("ErrorCode", "?"), e.get("ErrorMessage", "")) for e in errors
                      if e.get("ErrorCode") not in CAPACITY_ERRORS), None)
        if not new and other is not None and \
                not any(e.get("ErrorCode") in CAPACITY_ERRORS for e in errors):
            raise explain_client_error("ec2:CreateFleet", _Refusal(*other))  # not capacity
        marked = 0
        for e in errors:
            overrides = (e.get("LaunchTemplateAndOverrides") or {}).get("Overrides") or {}
            for p in offer:
                if _names(overrides, p) and _pool(p, lifecycle) not in result.failed:
                    result.failed[_pool(p, lifecycle)] = (e.get("ErrorCode", "?"),
                                                          e.get("ErrorMessage", ""))
                    marked += 1
        if len(new) < missing and not marked:
            for p in offer:   # EC2 did not say which pools ran short: all of them did
                result.failed[_pool(p, lifecycle)] = (
                    "InsufficientInstanceCapacity", f"launched {len(new)} of {missing}")

    def _fleet_request(self, req: LaunchRequest, missing: int, client_token: str,
                       pools: list | None = None, spot: bool | None = None) -> dict:
        """The CreateFleet arguments: one override per (type, subnet), spot or on-demand."""
        spot = req.spot if spot is None else spot
        overrides = []
        for itype, sub in self._pools(req, "spot" if spot else "on-demand") \
                if pools is None else pools:
            o = {"InstanceType": itype, "SubnetId": sub["SubnetId"]}
            if req.placement_group:
                o["Placement"] = {"GroupName": req.placement_group}
            overrides.append(o)
        tags = cluster_tags(self.cluster, **{TAG_LAUNCH: req.token, TAG_ROLE: req.role})
        kwargs = {
            "Type": "instant",
            "ClientToken": client_token[:64],   # same retry -> same token on AWS
            "LaunchTemplateConfigs": [{
                "LaunchTemplateSpecification": {"LaunchTemplateId": req.launch_template_id,
                                                "Version": "$Latest"},
                "Overrides": overrides}],
            "TargetCapacitySpecification": {
                "TotalTargetCapacity": missing,
                "DefaultTargetCapacityType": "spot" if spot else "on-demand"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "fleet", "Tags": cluster_tags(self.cluster)}],
        }
        if spot:
            kwargs["SpotOptions"] = {"AllocationStrategy": "capacity-optimized"}
        else:
            kwargs["OnDemandOptions"] = {"AllocationStrategy": "lowest-price"}
        return kwargs

    def _create_fleet(self, kwargs: dict, attempt: int) -> dict:
        """One CreateFleet; a retry after IAM lag gets a fresh ClientToken (nothing launched)."""
        if attempt:
            kwargs = {**kwargs, "ClientToken": f"{kwargs['ClientToken']}-{attempt}"[:64]}
        try:
            resp = self.ec2.create_fleet(**kwargs)
        except ClientError as err:
            if _profile_not_ready(error_code(err), err.response["Error"].get("Message", "")):
                raise ProfileNotReady() from err
            if error_code(err) in CAPACITY_ERRORS:
                raise _CapacityRefused(error_code(err),
                                       err.response["Error"].get("Message", "")) from err
            raise explain_client_error("ec2:CreateFleet", err) from err
        new = [iid for grp in resp.get("Instances", []) for iid in grp.get("InstanceIds", [])]
        if not new and any(_profile_not_ready(e.get("ErrorCode", ""), e.get("ErrorMessage", ""))
                           for e in resp.get("Errors") or []):
            raise ProfileNotReady()
        return resp

    def tag(self, ids, **tags: str) -> None:
        try:
            self.ec2.create_tags(
                Resources=list(ids), Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
            )
        except ClientError as err:
            raise explain_client_error("ec2:CreateTags", err) from err

    def terminate(self, ids) -> list[str]:
        ids = list(ids)
        if not ids:
            return []
        try:
            self.ec2.terminate_instances(InstanceIds=ids)
        except ClientError as err:
            raise explain_client_error("ec2:TerminateInstances", err) from err
        return ids

    def wait_terminated(self, ids, timeout: float = 600.0) -> None:
        if ids:
            self.ec2.get_waiter("instance_terminated").wait(
                InstanceIds=list(ids),
                WaiterConfig={"Delay": 2, "MaxAttempts": max(1, int(timeout / 2))},
            )

    def volumes(self) -> list[dict]:
        resp = self.ec2.describe_volumes(
            Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]
        )
        return resp["Volumes"]

    def volume_exists(self, volume_id: str) -> bool:
        return any(v["VolumeId"] == volume_id for v in self.volumes())

    def delete_volumes(self) -> list[str]:
        """Tagged volumes left detached (DeleteOnTermination off): they bill, so they go."""
        removed = []
        for vol in self.volumes():
            if vol.get("State") == "available":
                try:
                    self.ec2.delete_volume(VolumeId=vol["VolumeId"])
                    removed.append(vol["VolumeId"])
                except ClientError as err:
                    if error_code(err) != "InvalidVolume.NotFound":
                        raise explain_client_error("ec2:DeleteVolume", err) from err
        return removed

    def delete_fleets_and_spot_requests(self, instance_ids=()) -> list[str]:
        """Instant fleets and their spot requests outlive nothing, but sweep them anyway."""
        removed = []
        fleets = [
            f["FleetId"]
            for f in self.ec2.describe_fleets()["Fleets"]
            if {"Key": TAG_CLUSTER, "Value": self.cluster} in f.get("Tags", [])
            and f.get("FleetState") not in ("deleted", "deleted_running", "deleted_terminating")
        ]
        for i in range(0, len(fleets), 25):
            self._delete_fleets(fleets[i:i + 25])
        removed += [f"fleet/{f}" for f in fleets]
        requests = self.spot_requests(instance_ids)
        if requests:
            try:
                self.ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=requests)
            except ClientError as err:
                raise explain_client_error("ec2:CancelSpotInstanceRequests", err) from err
            removed += [f"spot-request/{r}" for r in requests]
        return removed

    def _delete_fleets(self, fleet_ids: list[str]) -> None:
        """Instant fleets must be deleted with their instances. An emulator (moto) refuses
        that for a fleet whose instances are all gone already: then go one by one."""
        try:
            self.ec2.delete_fleets(FleetIds=fleet_ids, TerminateInstances=True)
            return
        except ClientError as err:
            if error_code(err) != "InvalidParameterCombination" or len(fleet_ids) == 1:
                if error_code(err) == "InvalidParameterCombination":
                    return
                raise explain_client_error("ec2:DeleteFleets", err) from err
        for fid in fleet_ids:
            self._delete_fleets([fid])

    def spot_requests(self, instance_ids=()) -> list[str]:
        """Open/active spot requests of this cluster: by tag, or by the instances they made."""
        found = set()
        queries = [[{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster]}]]
        if instance_ids:
            queries.append([{"Name": "instance-id", "Values": list(instance_ids)}])
        for filters in queries:
            filters = filters + [{"Name": "state", "Values": ["open", "active"]}]
            resp = self.ec2.describe_spot_instance_requests(Filters=filters)
            found |= {r["SpotInstanceRequestId"] for r in resp["SpotInstanceRequests"]}
        return sorted(found)

    def console_output(self, instance_id: str) -> str:
        try:
            out = self.ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output", "")
        except ClientError as err:
            if error_code(err) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                raise UserError(
                    f"no instance {instance_id!r}", "see 'ec2mpi status' for the cluster's nodes"
                ) from None
            raise explain_client_error("ec2:GetConsoleOutput", err) from err
        try:
            return base64.b64decode(out, validate=True).decode(errors="replace")
        except ValueError:
            return out
