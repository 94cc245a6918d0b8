"""The instances of one cluster: launch (one call for N nodes), list, tag, terminate, and
the leftovers a launch can leave (fleets, spot requests, volumes).

Why one call per launch: client cost stays O(1) in the node count. Why our own launch
token on top of ClientToken: an emulator (moto) ignores ClientToken, and a resumed
create must not double the nodes on any endpoint, so we also tag every instance with
the token and only launch what is missing.
"""
from __future__ import annotations

import base64
import time
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
    avoid: frozenset = frozenset()   # (instance type, AZ) pools to leave out, if others remain


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
        """Make sure `req.count` instances of launch `req.token` exist, in ONE create_fleet call.

        Instances already tagged with the token count (a resumed launch); only the rest
        are launched. Returns all instance ids of the launch, in launch order.
        """
        have = self.instances(launch_token=req.token)
        missing = req.count - len(have)
        if missing <= 0:
            return [i.instance_id for i in have]
        kwargs = self._fleet_request(req, missing, f"{req.token}-{len(have)}")
        resp = while_profile_propagates(lambda attempt: self._create_fleet(kwargs, attempt))
        new = [iid for grp in resp.get("Instances", []) for iid in grp.get("InstanceIds", [])]
        if len(new) < missing:
            errors = resp.get("Errors") or [{"ErrorCode": "InsufficientInstanceCapacity",
                                             "ErrorMessage": f"launched {len(new)} of {missing}"}]
            e = errors[0]
            raise explain_client_error("ec2:CreateFleet",
                                       _Refusal(e.get("ErrorCode", "?"), e.get("ErrorMessage", "")))
        return [i.instance_id for i in have] + new

    def _fleet_request(self, req: LaunchRequest, missing: int, client_token: str) -> dict:
        """The CreateFleet arguments: one override per (type, subnet), spot or on-demand."""
        subnets = req.subnets[:1] if req.placement_group else req.subnets  # a cluster PG is one AZ
        pools = [(itype, sub) for itype in req.instance_types for sub in subnets]
        kept = [(t, sub) for t, sub in pools
                if not {(t, sub.get("AvailabilityZone", "")), (t, "")} & req.avoid]
        overrides = []
        for itype, sub in kept or pools:
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
                "DefaultTargetCapacityType": "spot" if req.spot else "on-demand"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "fleet", "Tags": cluster_tags(self.cluster)}],
        }
        if req.spot:
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
