"""Healing on the master: keep the cluster at its target size (`create --keep-size`).

Why the master launches from the cluster's own worker launch template (and not an EC2 Fleet
of type `maintain`): the target is ours to change (add-nodes, remove-nodes, resize and
autostop set it, so healing never fights them), a replacement can avoid the (type, AZ)
pool that just failed or was interrupted, and the master's role needs nothing beyond this
cluster's template, role and tags. New nodes join through the normal boot path.

Capacity: a launch fails over like the client's (Instances.launch_some, on-demand too
with the spec's spot_fallback); it leaves out the pools the client or an earlier heal
found short (the master state's `avoid` map, registry.avoided) and records the pools that
refuse it there, for the client's next launch.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from ..aws.instances import LaunchRequest
from ..aws.registry import avoid_pools, avoided
from ..config import ClusterSpec
from ..errors import Ec2mpiError
from .settings import from_env as settings_from_env

log = logging.getLogger("ec2mpi.agent.heal")
GOING = ("draining", "lost")


@dataclass
class HealSettings:
    """In seconds; EC2MPI_WATCH_HEAL_<NAME> overrides (tests): healing is a watcher duty."""
    cooldown: float = 30.0        # s after a launch before healing counts again
    backoff: float = 30.0         # s after a failed launch, doubling, at most max_backoff
    max_backoff: float = 600.0
    avoid_for: float = 600.0      # s a failed or interrupted (type, AZ) pool is avoided

    @classmethod
    def from_env(cls) -> HealSettings:
        return settings_from_env(cls, "WATCH_HEAL")


class Healer:
    """`source` gives what a launch needs: spec(), launch_template(), subnets(); `instances`
    is the EC2 adapter (instances.Instances) the master's role may use."""

    def __init__(self, source, instances, settings: HealSettings | None = None):
        self.source, self.instances = source, instances
        self.settings = settings or HealSettings.from_env()
        self.avoid: dict = {}         # (instance type, AZ) -> until (time.time())
        self.recent: dict = {}        # instance id launched by healing -> when
        self.next_try = 0.0
        self.failures = 0
        self.launches = 0

    def avoid_pool_of(self, instance, node) -> None:
        """A node was lost or interrupted: avoid its pool for a while, when there are others."""
        zone = getattr(instance, "zone", "") or ""
        if node is not None and node.instance_type:
            self.avoid[(node.instance_type, zone)] = time.time() + self.settings.avoid_for

    def heal(self, members, live: dict, master_state: dict) -> list:
        """Launch what is missing to reach the target; returns the new instance ids."""
        now = time.time()
        target = int(master_state.get("target") or 0)
        if not master_state.get("keep_size") or target <= 0 or now < self.next_try:
            return []
        going = {n.instance_id for n in members if n.state in GOING}
        self.recent = {i: t for i, t in self.recent.items()
                       if now - t < 2 * self.settings.cooldown and i not in live}
        have = [i for i in live if i not in going] + list(self.recent)
        missing = target - len(have)
        if missing <= 0:
            return []
        spec: ClusterSpec = self.source.spec()
        self.avoid = {pool: until for pool, until in self.avoid.items() if until > now}
        avoid = frozenset(self.avoid) | frozenset(avoided(master_state, now))
        request = LaunchRequest(self.source.launch_template(), missing, "heal-" + uuid.uuid4().hex,
                                spec.instance_types, tuple(self.source.subnets()), spot=spec.spot,
                                avoid=avoid, spot_fallback=spec.spot_fallback == "on-demand")
        log.info("healing: %d of %d node(s) missing, launching %d (avoiding %s)",
                 missing, target, missing, sorted(avoid) or "no pool")
        try:
            result = self.instances.launch_some(request)
        except Ec2mpiError as err:
            self._back_off(now, f"healing launch failed ({err})")
            return []
        failed = result.capacity_failed
        if failed:
            self.avoid.update({pool: now + self.settings.avoid_for for pool in failed})
            self._record(failed)
        ids = result.new
        self.recent.update({i: now for i in ids})
        if result.missing:
            self._back_off(now, f"healing launched {len(ids)} of {missing}: no capacity in "
                                f"{sorted(failed) or 'the pools tried'}")
            return ids
        self.failures, self.launches = 0, self.launches + 1
        self.next_try = now + self.settings.cooldown
        return ids

    def _back_off(self, now: float, why: str) -> None:
        self.failures += 1
        delay = min(self.settings.max_backoff, self.settings.backoff * 2 ** (self.failures - 1))
        self.next_try = now + delay
        log.warning("%s; next try in %.0f s", why, delay)

    def _record(self, pools) -> None:
        """Tell the client's next launch (and a new master) which pools refused."""
        record = getattr(self.source, "avoid_pools", None)
        if record is None:
            return
        try:
            record(pools, self.settings.avoid_for)
        except Exception as err:  # noqa: BLE001 - a hint for others, never a healing failure
            log.warning("could not record the pools to avoid: %s", err)


class ClusterSource:
    """What a healing launch needs, read with the master's role and cached for a minute."""

    def __init__(self, registry, templates, network, cluster: str):
        self.registry, self.templates, self.network = registry, templates, network
        self.cluster = cluster
        self._cache: dict = {}

    def _cached(self, key: str, make):
        value, at = self._cache.get(key, (None, 0.0))
        if value is None or time.monotonic() - at > 60:
            value = make()
            self._cache[key] = (value, time.monotonic())
        return value

    def spec(self) -> ClusterSpec:
        return self._cached("spec", lambda: ClusterSpec.from_json(
            self.registry.get_cluster(self.cluster)["spec"]))

    def launch_template(self) -> str:
        lt = self._cached("lt", lambda: self.templates.find_launch_template("worker"))
        if not lt:
            raise RuntimeError("the cluster's worker launch template is gone")
        return lt

    def subnets(self) -> list:
        return self._cached("subnets", lambda: self.network.subnets(self.spec().subnet_ids))

    def avoid_pools(self, pools, seconds: float) -> None:
        """Record pools that refused a healing launch in the master state (no membership
        bump: the master itself already avoids them)."""
        avoid_pools(self.registry, self.cluster, pools, seconds, bump=False)
