"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection`` does it.

Every ``renew_period_s`` each candidate reads the Lease. It takes (or renews) it when the Lease has no holder, is
held by itself, or has not changed for ``lease_duration_s`` *as observed by this candidate* (the holder's clock is
never trusted). The write is a replace carrying the read ``resourceVersion``, so of two candidates racing for an
expired Lease the API server lets one through and answers 409 to the other. A leader that cannot renew within
``lease_duration_s`` of its last successful renewal steps down by itself. On a clean stop the leader releases
the Lease (empty holder) so another replica takes over at once.

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
        return self._leader and time.monotonic() - self._renewed_at < self.cfg.lease_duration_s

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
        try:
            lease = await _json(await self._coord.read_namespaced_lease(name, ns, _preload_content=False))
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
                await _json(await self._coord.create_namespaced_lease(ns, body, _preload_content=False))
            except KubeError as e2:
                if e2.status == 409:  # another candidate created it first
                    self._set(False)
                    return False
                raise
            self._won()
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
            await _json(await self._coord.replace_namespaced_lease(name, ns, lease, _preload_content=False))
        except KubeError as e:
            if e.status == 409:  # lost the race: someone else wrote in between
                self._set(False)
                return False
            raise
        self._observed = (self.identity, lease["spec"]["renewTime"])
        self._observed_at = mono
        self._won()
        return True

    def _won(self) -> None:
        self._renewed_at = time.monotonic()
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
            lease = await _json(await self._coord.read_namespaced_lease(name, ns, _preload_content=False))
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                await _json(await self._coord.replace_namespaced_lease(name, ns, lease, _preload_content=False))
        except (KubeError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("lease release failed", error=str(e))
        self._set(False)
