"""Simulated GPU placement: which physical GPU each replica's share sits on, for ``gpus_held`` accounting.

Replicas holding a fraction of a GPU are packed best-fit (the used GPU with the least free capacity that still
fits, else an empty one) in milli-GPU units, the way HAMi's ``binpack`` GPU policy does; a GPU counts as held
while at least one replica sits on it. There are no migrations, so freed shares fragment as in a real cluster.
"""

from __future__ import annotations

MILLI = 1000


def to_milli(fraction: float) -> int:
    """A share in milli-GPU (1..1000), or whole GPUs × 1000 for a multi-GPU replica (fraction > 1)."""
    if fraction > 1:
        return round(fraction) * MILLI
    return max(1, min(MILLI, round(fraction * MILLI)))


class GpuPool:
    """An unbounded pool of identical GPUs; ``place`` and ``release`` keep ``used`` (GPUs holding a share)."""

    __slots__ = ("by_free", "free", "used")

    def __init__(self) -> None:
        self.free: list[int] = []
        """Free milli-GPU per GPU id."""
        self.by_free: dict[int, set[int]] = {}
        """GPU ids by their free capacity (partly used GPUs only)."""
        self.used = 0

    def place(self, milli: int) -> int:
        """Put a share of ``milli`` on a GPU (best fit, else an empty one); return the GPU id. A multi-GPU
        replica (``milli`` > 1000) takes whole GPUs of its own: they are only counted (id -1)."""
        if milli > MILLI:
            self.used += milli // MILLI
            return -1
        best = -1
        best_free = MILLI + 1
        for free, ids in self.by_free.items():
            if milli <= free < best_free and ids:
                best_free = free
                best = next(iter(ids))
        if best < 0:
            empty = self.by_free.get(MILLI)
            if empty:
                best = next(iter(empty))
                best_free = MILLI
            else:
                best = len(self.free)
                self.free.append(MILLI)
                best_free = MILLI
        if best_free == MILLI:
            self.used += 1
        self._move(best, best_free, best_free - milli)
        return best

    def release(self, gpu: int, milli: int) -> None:
        if milli > MILLI:
            self.used -= milli // MILLI
            return
        old = self.free[gpu]
        new = old + milli
        if new == MILLI:
            self.used -= 1
        self._move(gpu, old, new)

    def _move(self, gpu: int, old: int, new: int) -> None:
        ids = self.by_free.get(old)
        if ids is not None:
            ids.discard(gpu)
        self.free[gpu] = new
        self.by_free.setdefault(new, set()).add(gpu)
