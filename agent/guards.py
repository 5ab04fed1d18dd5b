"""Guard rails applied to every target a policy proposes, per model and cluster-wide.

In order: cooldown (no change in a direction sooner than its cooldown after the model's last applied change),
maximum step (``|target - current| <= max_step``), the cluster GPU budget (scale-downs first free GPUs, then
scale-ups are granted in model order while the budget lasts) and finally the model's min/max, which always win: a
target is never outside them. Each rule that changed a target leaves a note for the audit record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shadowscale.agent.config import GuardConfig


@dataclass(frozen=True, slots=True)
class Proposal:
    index: int
    current: int
    proposed: int


@dataclass(frozen=True, slots=True)
class Guarded:
    index: int
    target: int
    note: str | None


class Guards:
    """Holds when each model last changed; :meth:`apply` is otherwise a function of its arguments."""

    def __init__(self, cfg: GuardConfig, lo: Sequence[int], hi: Sequence[int], gpu_fraction: Sequence[float]) -> None:
        self.cfg = cfg
        self.lo = list(lo)
        self.hi = list(hi)
        self.gpu = list(gpu_fraction)
        self.last_change = [-math.inf] * len(self.lo)

    def changed(self, index: int, now: float) -> None:
        """Record that model ``index``'s replica count was changed at ``now`` (starts its cooldowns)."""
        self.last_change[index] = now

    def apply(self, now: float, proposals: Sequence[Proposal], gpus_in_use: float) -> list[Guarded]:
        """Guard ``proposals``; ``gpus_in_use`` is what every managed workload holds now (cluster-wide)."""
        cfg = self.cfg
        out: dict[int, tuple[int, str | None]] = {}
        for p in proposals:
            i, cur, want = p.index, p.current, p.proposed
            note = None
            bounded = min(max(want, self.lo[i]), self.hi[i])
            if bounded != want:
                want, note = bounded, f"min/max {self.lo[i]}..{self.hi[i]}"
            since = now - self.last_change[i]
            if want > cur and since < cfg.scale_up_cooldown_s - 1e-9:
                want, note = (
                    cur,
                    f"scale-up cooldown ({since:.1f} s of {cfg.scale_up_cooldown_s:g} s since last change)",
                )
            elif want < cur and since < cfg.scale_down_cooldown_s - 1e-9:
                want, note = (
                    cur,
                    f"scale-down cooldown ({since:.1f} s of {cfg.scale_down_cooldown_s:g} s since last change)",
                )
            if cfg.max_step and abs(want - cur) > cfg.max_step:
                want = cur + cfg.max_step if want > cur else cur - cfg.max_step
                note = f"max step {cfg.max_step}"
            out[i] = (want, note)
        if cfg.gpu_budget is not None:
            headroom = cfg.gpu_budget - gpus_in_use
            by_index = {p.index: p for p in proposals}
            for i, (want, _note) in out.items():
                cur = by_index[i].current
                if want < cur:
                    headroom += (cur - want) * self.gpu[i]
            for i in sorted(out):
                want, note = out[i]
                cur = by_index[i].current
                if want <= cur:
                    continue
                extra = max(0, math.floor((headroom + 1e-9) / self.gpu[i]))
                if want - cur > extra:
                    want = cur + extra
                    note = f"GPU budget {cfg.gpu_budget:g} ({max(headroom, 0.0):.2f} GPUs left)"
                headroom -= (want - cur) * self.gpu[i]
                out[i] = (want, note)
        result = []
        for i, (want, note) in out.items():
            bounded = min(max(want, self.lo[i]), self.hi[i])
            if bounded != want:
                note = f"min/max {self.lo[i]}..{self.hi[i]}"
            result.append(Guarded(i, bounded, note))
        return result
