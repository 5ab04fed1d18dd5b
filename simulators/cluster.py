"""Replica bookkeeping for one model, shared by the fast simulator and its event-loop reference.

A model's replicas are parallel lists (index = replica slot): ``free`` (time its current batch ends),
``ready`` (time its cold start ends), ``batch`` (requests in its current batch), ``ends`` (when each request of
that batch finishes, or None when all finish at ``free``) and ``created``. Each request of a batch finishes when
its own work is done (``L(b) × size``); the replica takes its next batch when the largest is done. A replica is
available to start a batch at ``max(free, ready)``. Removing a replica that is mid-batch lets it finish the
batch (graceful termination): it moves to the ``draining`` list and holds its GPU until then.
"""

from __future__ import annotations

import heapq


class Replicas:
    __slots__ = ("batch", "created", "draining", "ends", "free", "gpu", "heap", "heap_ok", "last_removed_gpu", "ready")

    def __init__(self) -> None:
        self.free: list[float] = []
        self.ready: list[float] = []
        self.batch: list[int] = []
        self.ends: list[tuple[float, ...] | None] = []
        self.created: list[float] = []
        self.gpu: list[int] = []
        """GPU id each replica's share sits on (simulated placement; -1 when not placed)."""
        self.last_removed_gpu = -1
        self.draining: list[tuple[float, int, tuple[float, ...] | None]] = []
        self.heap: list[tuple[float, int]] = []
        """(time the replica can start a batch, slot): valid while ``heap_ok``; the fast path keeps it."""
        self.heap_ok = False

    def __len__(self) -> int:
        return len(self.free)

    def add(self, now: float, cold_start_s: float, gpu: int = -1) -> None:
        self.free.append(now)
        self.ready.append(now + cold_start_s)
        self.batch.append(0)
        self.ends.append(None)
        self.created.append(now)
        self.gpu.append(gpu)
        self.heap_ok = False

    def remove_one(self, now: float) -> float:
        """Remove the replica Kubernetes' ReplicaSet controller would delete first; return when it lets go of
        its GPU (its GPU id is left in ``last_removed_gpu``).

        Ranking (controller_utils ``ActivePods``, simplified to what the simulator knows): a replica that is not
        ready yet goes before a ready one; among not-ready ones the newest; among ready ones the most recently
        ready (shortest ready time goes first); ties by the highest slot.
        """
        best = -1
        best_key: tuple[int, float, int] = (2, 0.0, 0)
        for i in range(len(self.free)):
            not_ready = self.ready[i] > now
            key = (0, -self.created[i], -i) if not_ready else (1, -self.ready[i], -i)
            if best < 0 or key < best_key:
                best, best_key = i, key
        release = now
        if self.free[best] > now and self.batch[best] > 0:
            self.draining.append((self.free[best], self.batch[best], self.ends[best]))
            release = self.free[best]
        self.last_removed_gpu = self.gpu[best]
        del self.free[best], self.ready[best], self.batch[best], self.ends[best], self.created[best], self.gpu[best]
        self.heap_ok = False
        return release

    def rebuild_heap(self) -> list[tuple[float, int]]:
        """The availability heap; its minimum is the slot :meth:`earliest` would pick."""
        self.heap = [(f if f > r else r, i) for i, (f, r) in enumerate(zip(self.free, self.ready, strict=True))]
        heapq.heapify(self.heap)
        self.heap_ok = True
        return self.heap

    def earliest(self) -> int:
        """Slot of the replica that can start a batch first (lowest slot on ties); -1 if there is none."""
        best = -1
        best_t = 0.0
        for i in range(len(self.free)):
            f = self.free[i]
            r = self.ready[i]
            t = f if f > r else r
            if best < 0 or t < best_t:
                best, best_t = i, t
        return best

    def ready_count(self, now: float) -> int:
        return sum(1 for r in self.ready if r <= now)

    def ready_seconds(self, t0: float, t1: float) -> float:
        """Ready-replica-seconds over [t0, t1] for the current replicas."""
        total = 0.0
        for r in self.ready:
            start = r if r > t0 else t0
            if start < t1:
                total += t1 - start
        return total

    def pending_start(self, now: float) -> bool:
        return any(r > now for r in self.ready)
