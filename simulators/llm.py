"""Continuous batching as vLLM does it: the serving state of one LLM model in the fast engine.

Semantics (``simulate_iterations`` below implements the same one iteration at a time, and tests compare them):

- Requests of the model wait in one FIFO queue (a shared load-balancer queue: each replica pulls from it).
- A replica runs engine steps back to back while it has work. At each step boundary it first lets finished
  requests leave (their KV cache is freed), then admits queued requests in FIFO order while the KV cache holds
  their whole prompt + output (reserved at admission, so no preemption), fewer than ``max_num_seqs`` run and
  the prompts fit ``max_batched_tokens``.
- Without chunked prefill (``LlmServing.chunked_prefill`` False): if it admitted any, the step is a prefill of
  those whole prompts (running requests wait, as vLLM's default scheduler then prefers prefills); each admitted
  request has its first token at the end of that step. Otherwise, with requests running, the step is a decode
  step: one token for each, taking ``d0 + d1·B + d2·K`` (``B`` running, ``K`` their context tokens; ``K`` grows
  by ``B`` per step).
- With chunked prefill (vLLM's ``--enable-chunked-prefill``, the default here): every step gives each decoding
  request its token first and fills the rest of the step's token budget (``max_batched_tokens``, 2048) with
  prompt chunks in FIFO order — first the prompts already being prefilled, then newly admitted ones (admitted
  while the budget has room; a draining replica finishes its started prompts but admits none). Such a mixed
  step takes ``a + b·T + c·Q + e·n + d1·B + d2·K`` (:meth:`IterationModel.mixed_s`); a request whose last chunk
  ran has its first token at the step's end and decodes from the next step. A step without chunks is a decode
  step as above. A long prompt thus delays the others' tokens by a chunk's time per step, not its whole prefill.
- An idle ready replica takes the queue head as soon as it arrives. Among replicas that could take the head,
  the one whose next boundary comes first does (ties: the lowest slot). Requests arriving at a boundary's
  instant are admitted at it. Routing is least-loaded: while another ready replica is idle, a replica running
  requests admits none and an idle one admits only one (requests that arrive at the same instant spread over
  the idle replicas instead of sharing one replica's steps).
- A request whose prompt + output exceed the model's context is rejected on arrival (vLLM answers 400): never
  served, an SLO miss, counted in ``rejected``.
- A queued request is dropped ``timeout`` after its arrival if no replica admitted it by then (admission at
  exactly that instant still counts).
- A removed replica admits nothing more, finishes its running requests, then lets go of its GPUs.
- Per request: TTFT = first token - arrival; TPOT = (completion - first token) / (output - 1) (0 for one
  token). It meets its SLO when both are within the model's TTFT and TPOT objectives.

The fast path jumps from one event to the next: between two boundaries where something changes, ``k`` decode
steps take ``k·s0 + d2·B·k(k-1)/2`` seconds (``s0`` the first step's time), so the time of the first boundary
at or after an instant is the root of a quadratic. Events: arrivals, a replica's next completion, the boundary
at which a replica takes the queue head, head time-outs.
"""

from __future__ import annotations

import bisect
import heapq
import math

import numpy as np
import numpy.typing as npt

from shadowscale.policies.llm import OUTPUT_TOKEN_BUCKETS, LlmServing
from shadowscale.policies.types import FloatArray

BoolArray = npt.NDArray[np.bool_]

INF = math.inf
_LAST_BUCKET = len(OUTPUT_TOKEN_BUCKETS) - 1


def steps_until(s0: float, h: float, x: float) -> int:
    """Smallest ``k >= 0`` with ``k·s0 + h·k(k-1)/2 >= x`` (``s0 > 0``, ``h >= 0``)."""
    if x <= 0.0:
        return 0
    if h <= 0.0:
        k = math.ceil(x / s0)
    else:
        b = s0 - h / 2.0
        k = math.ceil((-b + math.sqrt(b * b + 2.0 * h * x)) / h)
    k = max(k, 1)
    while k > 1 and (k - 1) * s0 + h * (k - 1) * (k - 2) / 2.0 >= x:
        k -= 1
    while k * s0 + h * k * (k - 1) / 2.0 < x:
        k += 1
    return k


class _Rep:
    """One replica: its state at its current step boundary ``t`` (past, or the end of a running prefill)."""

    __slots__ = (
        "bt",
        "created",
        "ctx",
        "draining",
        "fin",
        "gpu",
        "it",
        "kv",
        "n",
        "pre",
        "ready",
        "slot",
        "t",
        "ver",
        "wake",
    )

    def __init__(self, slot: int, now: float, ready: float, gpu: int) -> None:
        self.slot = slot
        self.created = now
        self.ready = ready
        self.gpu = gpu
        self.t = now
        self.n = 0  # running requests that decode (B)
        self.pre: list[list[float]] = []  # chunked prefill: [request, prompt tokens done] of prompts in progress
        self.ctx = 0.0  # their context tokens (K) at t
        self.it = 0  # decode steps done at t
        self.kv = 0.0  # KV tokens reserved
        self.fin: list[tuple[int, int]] = []  # (decode step count at which it is done, request)
        self.bt = now  # busy time is accounted up to here
        self.draining = False
        self.wake = INF
        self.ver = 0


class LlmModel:
    """Serving state of one LLM model (the continuous-batching counterpart of ``engine._Model``).

    ``advance`` has the same contract and result tuple as ``engine._advance``; the replica set is managed through
    ``add``/``remove_one``/``ready_count``/``last_removed_gpu``/``len`` as ``cluster.Replicas`` is.

    Busy time, the utilization policies read, is batch occupancy: a replica running ``B`` requests is busy
    ``min(1, B / batch_capacity)`` (``batch_capacity``: the profile's ``max_batch``, the batch the replica
    sustains within its objectives), the analogue of vLLM's running-requests gauge over its useful batch.
    """

    llm = True

    def __init__(
        self,
        start: int,
        end: int,
        serving: LlmServing,
        prompt: list[float],
        output: list[float],
        ttft: list[float],
        rejected: list[int],
        batch_capacity: int = 0,
        slo: tuple[list[float], list[float]] | None = None,
    ) -> None:
        self.ptr = start
        self.inv_cap = 1.0 / (batch_capacity if batch_capacity > 0 else serving.max_num_seqs)
        self.end = end
        self.s = serving
        it = serving.iteration
        self.pa, self.pb, self.pc, self.pe = it.prefill
        self.d0, self.d1, self.d2 = it.decode
        self.kv_cap = float(serving.kv_tokens)
        self.max_seqs = serving.max_num_seqs
        self.max_tokens = float(serving.max_batched_tokens)
        self.chunked = serving.chunked_prefill
        self.context = float(serving.arch.context)
        self.prompt = prompt
        self.output = output
        self.ttft = ttft
        self.rejected = rejected
        self.q: list[int] = []
        self.qh = 0  # index of the queue head in ``q`` (a list with a moving head is cheaper than a deque here)
        self.q_sum_a = 0.0
        self.arrived = 0
        self.inflight_done = 0.0
        self.out_sum_a = 0.0  # arrival times of requests admitted and not finished
        self.out_n = 0
        self.busy_done = 0.0
        self.finished = 0
        """Counter: requests that finished (served to their last token)."""
        self.finished_out = 0.0
        """Counter: output tokens of the requests that finished."""
        self.out_hist = [0] * len(OUTPUT_TOKEN_BUCKETS)
        """Counters: finished requests by output-token bucket (not cumulative; the last bucket takes the rest)."""
        if slo is None:  # one model's requests only (simulate_fast): its objectives, computed here
            p = np.asarray(prompt, dtype=np.float64)
            slo = (serving.ttft_slo_s(p).tolist(), serving.tpot_slo_s(p).tolist())
        self.ttft_slo, self.tpot_slo = slo
        """Per request (indexed as ``prompt``): its TTFT and TPOT objectives (``LlmServing.ttft_slo_s`` and
        ``tpot_slo_s``)."""
        self.missed = 0
        """Counter: requests that missed their objective (``request_met``: a finished one over its TTFT or TPOT
        objective, one that timed out in the queue, one rejected as too long), counted when that is known."""
        self.reps: list[_Rep] = []
        self.drain: list[_Rep] = []
        self.heap: list[tuple[float, int, _Rep, int, int]] = []
        self.seq = 0
        self.next_slot = 0
        self.last_removed_gpu = -1
        self._arr: list[float] = []
        self.table = [0.0, 1.0]  # engine's vector path reads table[1]; an LLM model is never "single"

    # ---------------------------------------------------------------------------------------------------------
    # replica set (the engine calls these at ticks)

    def __len__(self) -> int:
        return len(self.reps)

    def add(self, now: float, cold_start_s: float, gpu: int = -1) -> None:
        r = _Rep(self.next_slot, now, now + cold_start_s, gpu)
        self.next_slot += 1
        self.reps.append(r)
        if self.qh < len(self.q):
            self._assign_head(now)

    def ready_count(self, now: float) -> int:
        return sum(1 for r in self.reps if r.ready <= now)

    def remove_one(self, now: float) -> float:
        """Remove the replica the ReplicaSet controller deletes first (as ``Replicas.remove_one``); return when
        it lets go of its GPUs: now if idle, else when its running requests have finished."""
        best: _Rep | None = None
        best_key = (2, 0.0, 0)
        for r in self.reps:
            key = (0, -r.created, -r.slot) if r.ready > now else (1, -r.ready, -r.slot)
            if best is None or key < best_key:
                best, best_key = r, key
        assert best is not None
        self.reps.remove(best)
        self.last_removed_gpu = best.gpu
        if best.n == 0 and not best.pre and best.t <= now:
            best.ver += 1  # cancels its wake
            return now
        best.draining = True
        self.drain.append(best)
        return self._drain_end(best)

    def _drain_end(self, r: _Rep) -> float:
        """When a draining replica's last request finishes (no admissions any more; started prompts go on)."""
        t, it, n, ctx = r.t, r.it, r.n, r.ctx
        d0, d1, d2 = self.d0, self.d1, self.d2
        prompt = self.prompt
        output = self.output
        fin = list(r.fin)
        heapq.heapify(fin)
        pre = [list(e) for e in r.pre]
        while True:
            while fin and fin[0][0] <= it:
                j = heapq.heappop(fin)[1]
                n -= 1
                ctx -= prompt[j] + output[j] - 1.0
            if pre:
                t, it, n, ctx, pre, _ = self._mixed_step(t, it, n, ctx, pre, [], fin)
            elif fin:
                k = fin[0][0] - it
                t += k * (d0 + d1 * n + d2 * ctx) + d2 * n * k * (k - 1) / 2.0
                ctx += k * n
                it += k
            else:
                return t

    def _mixed_step(
        self,
        w: float,
        it: int,
        n: int,
        ctx: float,
        pre: list[list[float]],
        new: list[int],
        fin: list[tuple[int, int]],
    ) -> tuple[float, int, int, float, list[list[float]], list[int]]:
        """One chunked-prefill step from boundary ``w``: the ``n`` decoding requests get a token, prompt chunks
        of ``pre`` (in progress) then of ``new`` (just admitted, appended to it) fill the rest of the budget;
        prompts completed join the decoding ones (pushed on ``fin``). Returns (end, it, n, ctx, pre left, the
        requests whose first token comes at ``end``)."""
        budget = self.max_tokens - n
        prompt = self.prompt
        for j in new:
            pre.append([float(j), 0.0])
        tokens = 0.0
        sq = 0.0
        chunks = 0
        done: list[int] = []
        first: list[int] = []
        for idx, e in enumerate(pre):
            p = prompt[int(e[0])]
            rest = p - e[1]
            if budget <= 0.0 and rest > 0.0:
                break
            c = rest if rest < budget else budget
            s0 = e[1]
            e[1] = s0 + c
            tokens += c
            sq += (s0 + c) * (s0 + c) - s0 * s0
            budget -= c
            chunks += 1
            if e[1] >= p:
                done.append(idx)
        end = w + self.pa + self.pb * tokens + self.pc * sq + self.pe * chunks
        if n:
            end += self.d1 * n + self.d2 * ctx
        it += 1
        ctx += n
        if done:
            output = self.output
            for idx in done:
                j = int(pre[idx][0])
                first.append(j)
                n += 1
                ctx += prompt[j]
                heapq.heappush(fin, (it + int(output[j]) - 1, j))
            pre = [e for idx, e in enumerate(pre) if idx not in done] if len(done) < len(pre) else []
        return end, it, n, ctx, pre, first

    def next_event(self, now: float, timeout: float) -> float:
        """When the model must be looked at again (the engine asks after a scale change)."""
        nxt = self._top()
        if self.qh < len(self.q):
            nxt = min(nxt, self._arr[self.q[self.qh]] + timeout)
        return nxt

    # ---------------------------------------------------------------------------------------------------------
    # events

    def _top(self) -> float:
        heap = self.heap
        while heap:
            w, _, r, ver, _ = heap[0]
            if ver == r.ver:
                return w
            heapq.heappop(heap)
        return INF

    def _assign_head(self, now: float) -> None:
        """The queue head goes to the replica whose next boundary comes first among those it fits."""
        j = self.q[self.qh]
        need = self.prompt[j] + self.output[j]
        cap = self.kv_cap - need
        max_seqs = self.max_seqs
        best: _Rep | None = None
        best_t = INF
        best_k = 0
        d0 = self.d0
        d1 = self.d1
        d2 = self.d2
        for r in self.reps:
            if r.kv > cap or r.n + len(r.pre) >= max_seqs:
                continue
            k = 0
            n = r.n
            t = r.t
            if n == 0:
                if t < now:
                    t = now
                if t < r.ready:
                    t = r.ready
            elif t < now:
                s0 = d0 + d1 * n + d2 * r.ctx
                h = d2 * n
                k = steps_until(s0, h, now - t)
                t += k * s0 + h * k * (k - 1) / 2.0
            if t < best_t or (t == best_t and best is not None and r.slot < best.slot):
                best, best_t, best_k = r, t, k
        if best is not None and best_t < best.wake:
            best.ver += 1
            best.wake = best_t
            self.seq += 1
            heapq.heappush(self.heap, (best_t, self.seq, best, best.ver, best_k))

    def _late(self, j: int, latency: float) -> bool:
        """Whether finished request ``j`` missed its TTFT or TPOT objective (``request_met`` for one request)."""
        ttft = self.ttft[j]
        if ttft > self.ttft_slo[j] + 1e-12:
            return True
        o = self.output[j]
        return o > 1 and (latency - ttft) / (o - 1.0) > self.tpot_slo[j] + 1e-12

    def _step(self, r: _Rep, w: float, k: int, lat: list[float], timeout: float) -> None:
        """Move ``r`` to its boundary ``w`` (``k`` decode steps on), let finished requests leave, admit."""
        arr = self._arr
        n = r.n
        pre = r.pre
        if n or pre:
            occ = (n + len(pre)) * self.inv_cap
            self.busy_done += (occ if occ < 1.0 else 1.0) * (w - r.bt)
            if k:
                r.it += k
                r.ctx += k * n
        r.bt = w
        r.t = w
        fin = r.fin
        it = r.it
        prompt = self.prompt
        output = self.output
        if fin and fin[0][0] <= it:
            done = 0.0
            sum_a = 0.0
            out_tok = 0.0
            ctx = r.ctx
            kv = r.kv
            while fin and fin[0][0] <= it:
                j = heapq.heappop(fin)[1]
                a = arr[j]
                lat[j] = w - a
                sum_a += a
                n -= 1
                o = output[j]
                out_tok += o
                self.out_hist[min(bisect.bisect_left(OUTPUT_TOKEN_BUCKETS, o), _LAST_BUCKET)] += 1
                if self._late(j, w - a):
                    self.missed += 1
                need = prompt[j] + o
                ctx -= need - 1.0
                kv -= need
                done += 1.0
            self.inflight_done += done * w - sum_a
            self.out_sum_a -= sum_a
            self.out_n -= int(done)
            self.finished += int(done)
            self.finished_out += out_tok
            r.n = n
            if n == 0 and not pre:
                r.ctx = 0.0
                r.kv = 0.0
                if r.draining:
                    self.drain.remove(r)
                    r.ver += 1
                    return
            else:
                r.ctx = ctx if n else 0.0
                r.kv = kv
        q = self.q
        qh = self.qh
        chunked = self.chunked
        if (qh < len(q) and not r.draining and w >= r.ready) or pre:
            tokens = 0.0
            sq = 0.0
            joined: list[int] = []
            kv_cap = self.kv_cap
            max_seqs = self.max_seqs
            max_tokens = self.max_tokens
            if chunked:
                # the step's budget left after the decode tokens and the prompts already being prefilled
                tokens = r.n + sum(prompt[int(e[0])] - e[1] for e in pre)
                seqs = r.n + len(pre)
            nq = len(q) if not r.draining and w >= r.ready else qh
            # least-loaded routing: while another ready replica is idle, a busy one takes nothing and an idle one
            # takes one request (requests that arrive together spread over the idle replicas)
            limit = nq
            if qh < nq:
                for x in self.reps:
                    if x is not r and x.n == 0 and not x.pre and x.ready <= w and x.t <= w:
                        limit = 1 if r.n == 0 and not pre else 0
                        break
            while qh < nq:
                j = q[qh]
                a = arr[j]
                if a + timeout < w:  # timed out before this boundary
                    qh += 1
                    self.q_sum_a -= a
                    self.inflight_done += timeout
                    continue
                if len(joined) >= limit:
                    break
                p = prompt[j]
                o = output[j]
                if chunked:
                    if r.kv + p + o > kv_cap or seqs >= max_seqs or tokens >= max_tokens:
                        break
                    seqs += 1
                elif r.kv + p + o > kv_cap or r.n >= max_seqs or (joined and tokens + p > max_tokens):
                    break
                qh += 1
                self.q_sum_a -= a
                self.out_sum_a += a
                tokens += p
                r.kv += p + o
                if not chunked:
                    sq += p * p
                    r.n += 1
                    r.ctx += p
                    heapq.heappush(fin, (it + int(o) - 1, j))
                joined.append(j)
            self.qh = qh
            if joined or pre:
                admitted = len(joined)
                self.out_n += admitted
                ttft = self.ttft
                if chunked:
                    end, r.it, r.n, r.ctx, r.pre, first = self._mixed_step(w, r.it, r.n, r.ctx, pre, joined, fin)
                    for j in first:
                        ttft[j] = end - arr[j]
                else:
                    end = w + self.pa + self.pb * tokens + self.pc * sq + self.pe * admitted
                    for j in joined:
                        ttft[j] = end - arr[j]
                r.t = end
                r.ver += 1
                r.wake = end
                self.seq += 1
                heapq.heappush(self.heap, (end, self.seq, r, r.ver, 0))
                if qh < len(q) and not r.draining:
                    self._assign_head(w)
                if qh > 4096 and qh * 2 > len(q):
                    del q[:qh]
                    self.qh = 0
                return
        if r.n:
            n = r.n
            f = fin[0][0] - it
            s0 = self.d0 + self.d1 * n + self.d2 * r.ctx
            wake = w + f * s0 + self.d2 * n * f * (f - 1) / 2.0
            r.ver += 1
            r.wake = wake
            self.seq += 1
            heapq.heappush(self.heap, (wake, self.seq, r, r.ver, f))
        else:
            r.wake = INF
            r.ver += 1
        if self.qh < len(q) and not r.draining:
            self._assign_head(w)

    def advance(
        self,
        prev: float,
        until: float,
        arr: list[float],
        order: list[int],
        lat: list[float],
        timeout: float,
    ) -> tuple[float, float, float, int, int, float, int, float, bool, float]:
        """Process arrivals, steps and time-outs up to and including ``until``; the counters at ``until``."""
        self._arr = arr
        q = self.q
        ptr = self.ptr
        end = self.end
        prompt = self.prompt
        output = self.output
        context = self.context
        heap = self.heap
        while True:
            na = arr[order[ptr]] if ptr < end else INF
            w = self._top()
            ex = arr[q[self.qh]] + timeout if self.qh < len(q) else INF
            if na <= w and na <= ex:
                if na > until or na == INF:
                    break
                j = order[ptr]
                ptr += 1
                self.arrived += 1
                if prompt[j] + output[j] > context:
                    self.rejected[j] = 1
                    self.missed += 1
                    continue
                q.append(j)
                self.q_sum_a += na
                if self.qh == len(q) - 1:
                    self.ptr = ptr
                    self._assign_head(na)
                continue
            if w <= ex:
                if w > until or w == INF:
                    break
                _, _, r, _, k = heapq.heappop(heap)
                self.ptr = ptr
                self._step(r, w, k, lat, timeout)
                continue
            if ex >= until:
                break
            a = arr[q[self.qh]]
            self.qh += 1
            self.q_sum_a -= a
            self.inflight_done += timeout
            self.missed += 1
            if self.qh < len(q):
                self._assign_head(ex)
        self.ptr = ptr
        if until == INF:
            return float(self.arrived), 0.0, 0.0, 0, 0, INF, 0, 0.0, False, 0.0
        n_q = len(q) - self.qh
        out = n_q + self.out_n
        inflight = self.inflight_done + out * until - self.q_sum_a - self.out_sum_a
        busy = self.busy_done
        running = 0
        inv_cap = self.inv_cap
        for group in (self.reps, self.drain):
            for r in group:
                if (r.n or r.pre) and until > r.bt:
                    occ = (r.n + len(r.pre)) * inv_cap
                    busy += (occ if occ < 1.0 else 1.0) * (until - r.bt)
                    running += 1
        n_ready = 0
        ready_s = 0.0
        nxt = self._top()
        for r in self.reps:
            if r.ready <= until:
                n_ready += 1
                ready_s += until - (r.ready if r.ready > prev else prev)
            elif r.ready < nxt and n_q:
                nxt = r.ready
        if n_q:
            nxt = min(nxt, arr[q[self.qh]] + timeout)
        if running:
            nxt = until  # busy time grows with occupancy, not linearly per replica: look again at the next tick
        return float(self.arrived), busy, inflight, out, running, nxt, n_ready, ready_s, False, 0.0


def request_met(
    serving: LlmServing, prompt: FloatArray, output: FloatArray, latency: FloatArray, ttft: FloatArray
) -> tuple[FloatArray, BoolArray]:
    """(TPOT, met) of the requests of one model (``LlmServing.ttft_slo_s``/``tpot_slo_s``, vectorised); a NaN
    latency means not served, never met."""
    tpot: FloatArray = np.where(output > 1, (latency - ttft) / np.maximum(output - 1.0, 1.0), 0.0)
    ttft_slo = serving.ttft_slo_s(prompt)
    tpot_slo = serving.tpot_slo_s(prompt)
    served = ~np.isnan(latency)
    met: BoolArray = (
        served & (np.nan_to_num(ttft, nan=INF) <= ttft_slo + 1e-12) & (np.nan_to_num(tpot, nan=INF) <= tpot_slo + 1e-12)
    )
    return tpot, met


class _RefRep:
    __slots__ = ("chunks", "created", "draining", "end", "joined", "kind", "pre", "ready", "run", "slot")

    def __init__(self, slot: int, created: float, ready: float) -> None:
        self.slot = slot
        self.created = created
        self.ready = ready
        self.end: float | None = None  # end of the step in progress; None when idle
        self.kind = ""
        self.run: list[list[float]] = []  # [request, decode steps left, context tokens]
        self.joined: list[int] = []
        self.pre: list[list[float]] = []  # chunked prefill: [request, prompt tokens done]
        self.chunks: list[tuple[list[float], float]] = []  # the step's (prompt in progress, chunk tokens)
        self.draining = False


def simulate_iterations(
    serving: LlmServing,
    arrival: list[float],
    prompt: list[float],
    output: list[float],
    schedule: list[tuple[float, int]],
    cold_start_s: float,
    timeout: float,
) -> tuple[list[float], list[float], list[int]]:
    """The reference: the semantics above simulated one engine step at a time (slow, plain).

    ``schedule`` is ``[(time, replicas)]`` (sorted; one at time 0 starts warm); returns per request
    (latency, TTFT, rejected) with NaN where not served. At one instant: arrivals, then the replicas whose step
    ends (by slot), then idle ready replicas take the queue, then time-outs, then the scale change.
    """
    it = serving.iteration
    n_req = len(arrival)
    lat = [math.nan] * n_req
    ttft = [math.nan] * n_req
    rejected = [0] * n_req
    kv_cap = float(serving.kv_tokens)
    q: list[int] = []
    reps: list[_RefRep] = []
    draining: list[_RefRep] = []

    def fits(r: _RefRep, j: int) -> bool:
        kv = sum(prompt[int(x[0])] + output[int(x[0])] for x in r.run + r.pre)
        return kv + prompt[j] + output[j] <= kv_cap and len(r.run) + len(r.pre) < serving.max_num_seqs

    def admit_limit(r: _RefRep, now: float) -> int:
        """Least-loaded routing: while another ready replica is idle, a busy replica admits nothing, an idle one
        one request."""
        if any(x is not r and x.end is None and x.ready <= now for x in reps):
            return 1 if not r.run and not r.pre else 0
        return len(q)

    def chunked_boundary(r: _RefRep, now: float) -> None:
        """Chunked prefill: decode tokens first, then chunks of the prompts in progress, then of new ones."""
        budget = float(serving.max_batched_tokens - len(r.run))
        chunks: list[tuple[list[float], float]] = []
        for e in r.pre:
            rest = prompt[int(e[0])] - e[1]
            if budget <= 0 and rest > 0:
                break
            c = min(rest, budget)
            chunks.append((e, c))
            budget -= c
        if not r.draining and r.ready <= now:
            limit = admit_limit(r, now)
            admitted = 0
            while q:
                j = q[0]
                if arrival[j] + timeout < now:
                    q.pop(0)
                    continue
                if admitted >= limit or not fits(r, j) or budget <= 0:
                    break
                admitted += 1
                q.pop(0)
                e = [float(j), 0.0]
                r.pre.append(e)
                c = min(prompt[j], budget)
                chunks.append((e, c))
                budget -= c
        if chunks:
            tokens = sum(c for _, c in chunks)
            sq = sum((e[1] + c) ** 2 - e[1] ** 2 for e, c in chunks)
            r.end = now + it.mixed_s(len(chunks), tokens, sq, len(r.run), sum(x[2] for x in r.run))
            r.kind = "mixed"
            r.chunks = chunks
        elif r.run:
            r.end = now + it.decode_s(len(r.run), sum(x[2] for x in r.run))
            r.kind = "decode"
        else:
            r.end = None

    def boundary(r: _RefRep, now: float) -> None:
        """At a step boundary (or when idle): admit and prefill, else decode, else idle."""
        if serving.chunked_prefill:
            chunked_boundary(r, now)
            return
        if not r.draining and r.ready <= now:
            joined: list[int] = []
            tokens = 0.0
            limit = admit_limit(r, now)
            while q:
                j = q[0]
                if arrival[j] + timeout < now:
                    q.pop(0)
                    continue
                if (
                    len(joined) >= limit
                    or not fits(r, j)
                    or (joined and tokens + prompt[j] > serving.max_batched_tokens)
                ):
                    break
                q.pop(0)
                joined.append(j)
                tokens += prompt[j]
                r.run.append([float(j), output[j] - 1.0, prompt[j]])
            if joined:
                r.end = now + it.prefill_s(len(joined), tokens, sum(prompt[j] ** 2 for j in joined))
                r.kind = "prefill"
                r.joined = joined
                return
        if r.run:
            r.end = now + it.decode_s(len(r.run), sum(x[2] for x in r.run))
            r.kind = "decode"
        else:
            r.end = None

    def finish(r: _RefRep, now: float) -> None:
        if r.kind == "prefill":
            for j in r.joined:
                ttft[j] = now - arrival[j]
        elif r.kind == "mixed":
            for x in r.run:
                x[1] -= 1
                x[2] += 1
            for e, c in r.chunks:
                e[1] += c
                j = int(e[0])
                if e[1] >= prompt[j]:
                    ttft[j] = now - arrival[j]
                    r.pre.remove(e)
                    r.run.append([float(j), output[j] - 1.0, prompt[j]])
        else:
            for x in r.run:
                x[1] -= 1
                x[2] += 1
        for x in r.run:
            if x[1] <= 0:
                lat[int(x[0])] = now - arrival[int(x[0])]
        r.run = [x for x in r.run if x[1] > 0]

    def idle_take(now: float) -> None:
        changed = True
        while changed:
            changed = False
            for r in sorted(reps, key=lambda x: x.slot):
                if r.end is None and q and r.ready <= now:
                    boundary(r, now)
                    changed = changed or r.end is not None

    def victim_key(r: _RefRep, now: float) -> tuple[int, float, int]:
        return (0, -r.created, -r.slot) if r.ready > now else (1, -r.ready, -r.slot)

    ai = 0
    si = 0
    slot = 0
    while True:
        cands: list[float] = []
        if ai < n_req:
            cands.append(arrival[ai])
        if si < len(schedule):
            cands.append(schedule[si][0])
        cands.extend(r.end for r in reps + draining if r.end is not None)
        if q:
            cands.append(arrival[q[0]] + timeout)
            cands.extend(r.ready for r in reps if r.end is None)
        now = min((c for c in cands if c >= 0), default=math.inf)
        if now == math.inf:
            break
        while ai < n_req and arrival[ai] == now:
            if prompt[ai] + output[ai] > serving.arch.context:
                rejected[ai] = 1
            else:
                q.append(ai)
            ai += 1
        for r in sorted(reps + draining, key=lambda x: x.slot):
            if r.end is not None and r.end == now:
                finish(r, now)
                boundary(r, now)
        draining[:] = [r for r in draining if r.end is not None]
        idle_take(now)
        while q and arrival[q[0]] + timeout <= now:
            q.pop(0)
        while si < len(schedule) and schedule[si][0] == now:
            want = schedule[si][1]
            cold = 0.0 if now == 0.0 else cold_start_s
            while len(reps) < want:
                reps.append(_RefRep(slot, now, now + cold))
                slot += 1
            while len(reps) > want:
                victim = min(reps, key=lambda x: victim_key(x, now))
                reps.remove(victim)
                if victim.end is not None:
                    victim.draining = True
                    draining.append(victim)
            si += 1
            idle_take(now)
    return lat, ttft, rejected


def simulate_fast(
    serving: LlmServing,
    arrival: list[float],
    prompt: list[float],
    output: list[float],
    schedule: list[tuple[float, int]],
    cold_start_s: float,
    timeout: float,
) -> tuple[list[float], list[float], list[int]]:
    """:class:`LlmModel` driven the way the engine drives it (advance to each scale change, then apply it), for
    the comparison with :func:`simulate_iterations`; same arguments and result."""
    n = len(arrival)
    lat = [math.nan] * n
    ttft = [math.nan] * n
    rejected = [0] * n
    m = LlmModel(0, n, serving, prompt, output, ttft, rejected)
    order = list(range(n))
    prev = 0.0
    for t, want in schedule:
        m.advance(prev, t, arrival, order, lat, timeout)
        cold = 0.0 if t == 0.0 else cold_start_s
        while len(m) < want:
            m.add(t, cold)
        while len(m) > want:
            m.remove_one(t)
        prev = t
    m.advance(prev, INF, arrival, order, lat, timeout)
    return lat, ttft, rejected
