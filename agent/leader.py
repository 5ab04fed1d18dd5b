"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection`` does it.

Every ``renew_period_s`` each candidate reads the Lease. It takes (or renews) it when the Lease has no holder, is
held by itself, or has not changed for ``lease_duration_s`` *as observed by this candidate* (the holder's clock is
never trusted). The write is a replace carrying the read ``resourceVersion``, so of two candidates racing for an
expired Lease the API server lets one through and answers 409 to the other (which stays a follower). A leader
counts its renewal from the moment it *sent* the read (not when the answer came), and stops being leader once
``renew_deadline_s`` (below ``lease_duration_s``) has passed without a successful renewal: it has stepped down
before any other candidate can consider the Lease expired. Every Lease call has a time limit
(``request_timeout_s``). On a clean stop the leader releases the Lease (empty holder) so another replica takes
over at once.

Only the holder does cluster-wide work (``Agent.is_leader``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client

from shadowscale.agent.config import LeaderConfig
from shadowscale.agent.kube import KubeError, _json

log = structlog.get_logger("shadowscale.leader")


def _micro(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """``run(stop)`` campaigns until ``stop``; ``is_leader()`` answers at any time."""

    def __init__(
        self, cfg: LeaderConfig, identity: str, api: Any, on_change: Callable[[bool], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.on_change = on_change
        self.identity = identity
        self._coord: Any = client.CoordinationV1Api(api)
        self._leader = False
        self._renewed_at = -1e18
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        self.changed = asyncio.Event()
        """Set whenever leadership is gained or lost (tests and logs wait on it)."""
        self.transitions = 0

    def is_leader(self) -> bool:
        return self._leader and time.monotonic() - self._renewed_at < self.cfg.deadline_s

    async def _call(self, method: Any, *args: Any) -> Any:
        """One Lease call, bounded by ``request_timeout_s`` (client-side and as a whole)."""
        t = self.cfg.request_timeout_s
        resp = await asyncio.wait_for(method(*args, _preload_content=False, _request_timeout=t), t)
        return await asyncio.wait_for(_json(resp), t)

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            self.transitions += 1
            log.info("leadership gained" if leader else "leadership lost", identity=self.identity, lease=self.cfg.name)
            self.changed.set()
            if self.on_change is not None:
                self.on_change(leader)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.try_acquire_or_renew()
                except (KubeError, aiohttp.ClientError, TimeoutError) as e:
                    log.warning("lease update failed", error=str(e), lease=self.cfg.name)
                if self._leader and not self.is_leader():
                    self._set(False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.cfg.renew_period_s)
        finally:
            if self._leader:
                await self.release()

    async def try_acquire_or_renew(self) -> bool:
        ns, name = self.cfg.namespace, self.cfg.name
        now = time.time()
        sent = time.monotonic()  # a renewal counts from before the request: the answer may come late
        try:
            lease = await self._call(self._coord.read_namespaced_lease, name, ns)
        except KubeError as e:
            if e.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": ns},
                "spec": self._spec(now, now, 0),
            }
            try:
                await self._call(self._coord.create_namespaced_lease, ns, body)
            except KubeError as e2:
                if e2.status == 409:  # another candidate created it first
                    self._set(False)
                    return False
                raise
            self._won(sent)
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime", "")))
        mono = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, mono
        duration = float(spec.get("leaseDurationSeconds") or self.cfg.lease_duration_s)
        expired = mono - self._observed_at >= duration
        if holder and holder != self.identity and not expired:
            self._set(False)
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        lease["spec"] = {**spec, **self._spec(now, None, transitions)}
        if acquired:
            lease["spec"]["acquireTime"] = acquired
        try:
            await self._call(self._coord.replace_namespaced_lease, name, ns, lease)
        except KubeError as e:
            if e.status == 409:  # lost the race: someone else wrote in between
                self._set(False)
                return False
            raise
        self._observed = (self.identity, lease["spec"]["renewTime"])
        self._observed_at = mono
        self._won(sent)
        return True

    def _won(self, sent: float) -> None:
        self._renewed_at = sent
        self._set(True)

    def _spec(self, now: float, acquired: float | None, transitions: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.cfg.lease_duration_s)),
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }
        spec["acquireTime"] = _micro(acquired if acquired is not None else now)
        return spec

    async def release(self) -> None:
        """Give the Lease up (empty holder) so another candidate need not wait for it to expire."""
        ns, name = self.cfg.namespace, self.cfg.name
        try:
            lease = await self._call(self._coord.read_namespaced_lease, name, ns)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                await self._call(self._coord.replace_namespaced_lease, name, ns, lease)
        except (KubeError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("lease release failed", error=str(e))
        self._set(False)
