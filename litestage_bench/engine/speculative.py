"""Lossless skipping: self-speculative greedy decoding on the executor's one KV cache.

A skip plan drafts up to k tokens cheaply; one dense forward over the pending token and the drafts
verifies them; the longest prefix of drafts equal to the dense model's greedy choices is accepted,
plus the dense model's own next token. The output is dense greedy decoding's, token for token
(float32; in lower precision only up to the rounding of a block forward vs. single-token steps).

KV cache (``SkipKVCache``, batch 1, so slot = position): the prompt is prefilled dense. Drafting
appends the pending token and the drafts with the keys/values of the layers the draft runs (its
own ``fill`` rule when its schedule re-activates an attention layer within a round); it reads the
dense entries of every verified position, so it drafts from a dense history. Its own entries
are not the dense model's (the hidden states under skipping differ), so verification first
truncates back to the pending token and recomputes every layer over it and the drafts; then the
cache is cut after the accepted drafts, so the next round continues from the accepted prefix and
no layer holds a rejected or draft-only entry. At the end the cache holds the prompt and every
generated token but the last (``Generation.fed_tokens``), as ``SkipExecutor.generate`` leaves it.

Entry points: ``generate_speculative`` (one prompt from an empty cache) and ``generate_drafted``
(what the reasoner calls for a stage whose plan carries a ``Draft``: ``SkipExecutor.generate``'s
inputs, shared prefix and cache, prefilled dense as there). Batched rows are exact: they draft in
the same slots (a row with fewer drafts is fed masked padding), are verified in one block with
padding after each row's drafts, and each row then keeps its own accepted prefix; the slots of its
rejected drafts become padding, so rows advance by different lengths (``_speculate``). The methods
``selfspec`` and ``litestage-spec`` (``methods/speculative.py``) supply the drafts.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .executor import CostMeter, Generation, SkipExecutor, synchronize
from .kvcache import SkipKVCache
from .plan import DENSE_STAGE, Draft, SkipSet, StagePlan


@dataclass
class SpeculativeStats:
    """Counts and times of speculative generation (one row, or the sum of several). A verify step
    is one dense block forward; `accept_lengths` holds the drafts it accepted (the verifier's own
    next token not counted)."""

    drafted: int = 0
    accept_lengths: list[int] = field(default_factory=list)  # one entry per verify step
    confidence_stops: int = 0  # draft rounds ended by the confidence threshold
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    draft_cost: CostMeter = field(default_factory=CostMeter)
    verify_cost: CostMeter = field(default_factory=CostMeter)  # dense: prefill and verify forwards

    @property
    def verify_steps(self) -> int:
        return len(self.accept_lengths)

    @property
    def accepted(self) -> int:
        """Drafts accepted over all verify steps."""
        return sum(self.accept_lengths)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / drafted tokens (1.0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 1.0

    @property
    def accepted_per_step(self) -> float:
        """Mean accepted drafts per verify step."""
        return self.accepted / self.verify_steps if self.verify_steps else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Mean tokens a verify step yields, its own next token included (Spec-Bench's "mean
        accepted tokens"; 1.0 for plain decoding), counting the verifier's token also where an
        accepted stop token among the drafts left it unused."""
        return self.accepted_per_step + 1.0 if self.verify_steps else 0.0

    def add(self, other: "SpeculativeStats") -> None:
        self.drafted += other.drafted
        self.accept_lengths += other.accept_lengths
        self.confidence_stops += other.confidence_stops
        self.prefill_seconds += other.prefill_seconds
        self.draft_seconds += other.draft_seconds
        self.verify_seconds += other.verify_seconds
        self.draft_cost.add(other.draft_cost)
        self.verify_cost.add(other.verify_cost)

    def summary(self) -> dict:
        """The additive counts and times (what an item result keeps per stage)."""
        return {"verify_steps": self.verify_steps, "drafted": self.drafted, "accepted": self.accepted,
                "confidence_stops": self.confidence_stops, "draft_s": self.draft_seconds,
                "verify_s": self.verify_seconds, "draft_flops": self.draft_cost.executed,
                "draft_flops_dense": self.draft_cost.total}

    def to_dict(self) -> dict:
        return {"verify_steps": self.verify_steps, "drafted": self.drafted, "accepted": self.accepted,
                "accept_lengths": list(self.accept_lengths), "confidence_stops": self.confidence_stops,
                "acceptance_rate": self.acceptance_rate, "accepted_per_step": self.accepted_per_step,
                "tokens_per_step": self.tokens_per_step, "prefill_seconds": self.prefill_seconds,
                "draft_seconds": self.draft_seconds, "verify_seconds": self.verify_seconds,
                "draft_flops": self.draft_cost.executed, "verify_flops": self.verify_cost.executed}


@dataclass
class SpeculativeGeneration(Generation):
    """A ``Generation`` (tokens, stop reasons, cache as ``generate`` leaves it) plus stats: `stats`
    summed over the rows, `row_stats` per row. `cost` sums every forward (prefill, drafts,
    verification): tokens are processed more than once, so compare `cost.executed` with dense's
    rather than reading `cost.fraction`."""

    stats: SpeculativeStats = field(default_factory=SpeculativeStats)
    row_stats: list[SpeculativeStats] = field(default_factory=list)


def _check(draft: StagePlan, max_new_tokens: int, k: int) -> None:
    if max_new_tokens < 1 or k < 1:
        raise ValueError(f"need max_new_tokens >= 1 and k >= 1, got {max_new_tokens} and {k}")
    if draft.dynamic_ffn is not None:
        raise ValueError("a draft plan with per-token FFN rules (dynamic_ffn) is not supported")


def _draft_fill(ex: SkipExecutor, draft: StagePlan, max_new_tokens: int) -> frozenset[int]:
    """Attention layers the draft skips at one step and runs at a later one: they need keys/values."""
    return ex.fill_layers(dataclasses.replace(draft, prefill=draft.skip_at(0)), max_new_tokens)


def _share(cost: CostMeter, meters: list[CostMeter], tokens: list[float]) -> None:
    """Split a batched forward's cost over the rows' meters by the tokens each row fed."""
    fed = sum(tokens)
    for meter, n in zip(meters, tokens):
        if n:
            meter.executed += cost.executed * n / fed
            meter.total += cost.total * n / fed


@contextmanager
def _verify_blocks_are_decode(ex: SkipExecutor):
    """Detach the executor's block clock (which times multi-token forwards as prefill): verify
    blocks are decoding."""
    clock, ex.block_clock = ex.block_clock, None
    try:
        yield
    finally:
        ex.block_clock = clock


def _speculate(ex: SkipExecutor, cache: SkipKVCache, logits: torch.Tensor, draft: StagePlan, max_new_tokens: int,
               k: int, stop: frozenset[int], min_confidence: float | None, fill: frozenset[int],
               stats: list[SpeculativeStats]) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy decoding of every row of `cache`, whose last slot holds each row's last prompt token
    (`logits`: their next-token logits [rows, vocab]). Returns per row the tokens and the logits of
    the last one; the cache is left holding every row's generated tokens but the last.

    Rows draft in the same slots (a row that drafts fewer tokens, or none, is fed masked padding),
    are verified in one [rows, 1 + drafts] block (padding after a row's drafts), and then each row
    keeps its pending token and accepted drafts: the slots of its rejected drafts become padding,
    so rows advance by different lengths. Seconds are shared equally by the rows active in a round."""
    device, rows = ex.device, logits.shape[0]
    if rows > 1 and draft.schedule:
        raise ValueError("batched rows draft at different positions: use a draft without a schedule")
    dense = SkipSet()
    start_counts = cache.next_pos.tolist()  # real tokens per row before generation
    out = [[int(t)] for t in logits.argmax(-1).tolist()]
    last = [logits[r:r + 1] for r in range(rows)]

    def finished(r: int) -> bool:
        return out[r][-1] in stop or len(out[r]) >= max_new_tokens

    while not all(finished(r) for r in range(rows)):
        active = [not finished(r) for r in range(rows)]
        # the cache holds each row's prompt and out[r][:-1]; out[r][-1] is pending (not yet fed).
        # Drafting d tokens can yield d + 1: draft one fewer than still wanted (0: a plain dense step)
        budget = [min(k, max_new_tokens - len(out[r]) - 1) if active[r] else 0 for r in range(rows)]
        cache.reserve(max(budget) + 1)
        base = cache.length
        drafts: list[list[int]] = [[] for _ in range(rows)]
        drafting = [b > 0 for b in budget]
        t0 = time.perf_counter()
        feed = [o[-1] for o in out]
        for j in range(max(budget)):
            live = [drafting[r] and j < budget[r] for r in range(rows)]
            if not any(live):
                break
            ids = torch.tensor([[f] for f in feed], device=device)
            valid = torch.tensor([[x] for x in live], device=device)
            step_cost = CostMeter()
            step_logits = ex.forward(cache, ids, valid, draft.skip_at(len(out[0]) - 1 + j), draft,
                                     step_cost, fill=fill)[:, -1]
            _share(step_cost, [stats[r].draft_cost for r in range(rows)], [float(x) for x in live])
            choice = step_logits.argmax(-1).tolist()
            confident = (step_logits.softmax(-1).amax(-1) >= min_confidence).tolist() if min_confidence is not None else None
            for r in range(rows):
                if not live[r]:
                    drafting[r] = False
                    continue
                feed[r] = choice[r]
                drafts[r].append(choice[r])
                if choice[r] in stop:  # nothing after a stop token is wanted
                    drafting[r] = False
                elif confident is not None and not confident[r]:
                    stats[r].confidence_stops += 1
                    drafting[r] = False
        synchronize(device)
        t1 = time.perf_counter()

        cache.truncate(base)  # drafted entries are not the dense model's: recompute all layers
        width = 1 + max(len(d) for d in drafts)
        block = torch.zeros(rows, width, dtype=torch.long, device=device)
        valid = torch.zeros(rows, width, dtype=torch.bool, device=device)
        for r in range(rows):
            if active[r]:
                seq = [out[r][-1], *drafts[r]]
                block[r, :len(seq)] = torch.tensor(seq, device=device)
                valid[r, :len(seq)] = True
        verify_cost = CostMeter()
        verify = ex.forward(cache, block, valid, dense, DENSE_STAGE, verify_cost, logits="all")
        _share(verify_cost, [stats[r].verify_cost for r in range(rows)], valid.sum(1).tolist())
        choices = verify.argmax(-1).tolist()
        accepted = [0] * rows
        for r in range(rows):
            while accepted[r] < len(drafts[r]) and drafts[r][accepted[r]] == choices[r][accepted[r]]:
                accepted[r] += 1
        # keep each row's pending token and accepted drafts; its later slots of the block become padding
        for r in range(rows):
            cache.valid[r, base + (1 + accepted[r] if active[r] else 0):base + width] = False
        cache.next_pos = cache.valid[:, :cache.length].long().sum(1)
        used = cache.valid[:, :cache.length].any(0).nonzero()
        cache.truncate(max(int(used[-1]) + 1 if len(used) else 0, base))
        synchronize(device)
        t2 = time.perf_counter()
        share = sum(active)
        for r in range(rows):
            if not active[r]:
                continue
            stats[r].draft_seconds += (t1 - t0) / share
            stats[r].verify_seconds += (t2 - t1) / share
            stats[r].drafted += len(drafts[r])
            stats[r].accept_lengths.append(accepted[r])
            for i in range(accepted[r] + 1):  # accepted drafts equal choices[:n]; choices[n] is the dense next token
                out[r].append(choices[r][i])
                last[r] = verify[r, i:i + 1]
                if finished(r):
                    break
    # a stop token or the cap may end a row inside its accepted drafts: keep nothing past out[r][:-1]
    cache.keep_first([n + len(o) - 1 for n, o in zip(start_counts, out)])
    return out, last


def _total_cost(stats: SpeculativeStats) -> CostMeter:
    cost = CostMeter()
    cost.add(stats.verify_cost)
    cost.add(stats.draft_cost)
    return cost


@torch.inference_mode()
def generate_speculative(executor: SkipExecutor, prompt: list[int], draft: StagePlan, max_new_tokens: int,
                         k: int = 4, stop_ids: frozenset[int] | set[int] = frozenset(),
                         min_confidence: float | None = None) -> SpeculativeGeneration:
    """Dense greedy decoding of `prompt`, drafted under `draft` and verified dense.

    Generated token j is drafted under ``draft.skip_at(j)`` (with its replacement factors); the
    draft's prefill set is unused (the prompt runs dense: verification reads its keys/values).
    `k`: drafts per round at most. `min_confidence`: end a round early once a draft's max softmax
    probability is below it (that draft is still verified); None never ends early.
    """
    _check(draft, max_new_tokens, k)
    if not prompt:
        raise ValueError("empty prompt")
    ex = executor
    stats = SpeculativeStats()
    synchronize(ex.device)
    start = time.perf_counter()
    cache = ex.new_cache(1, len(prompt) + max_new_tokens + k + 1)
    ids = torch.tensor([prompt], device=ex.device)
    logits = ex.forward(cache, ids, torch.ones_like(ids, dtype=torch.bool), SkipSet(), DENSE_STAGE,
                        stats.verify_cost)[:, -1]
    synchronize(ex.device)
    stats.prefill_seconds = time.perf_counter() - start
    with _verify_blocks_are_decode(ex):
        out, last = _speculate(ex, cache, logits, draft, max_new_tokens, k, frozenset(stop_ids), min_confidence,
                               _draft_fill(ex, draft, max_new_tokens), [stats])
    synchronize(ex.device)
    return SpeculativeGeneration(tokens=out, stopped=["stop" if out[0][-1] in stop_ids else "length"],
                                 seconds=time.perf_counter() - start, cost=_total_cost(stats), cache=cache,
                                 last_logits=last[0], steps=len(out[0]), stats=stats, row_stats=[stats])


@torch.inference_mode()
def generate_drafted(executor: SkipExecutor, inputs: list[list[int]], draft: Draft, max_new_tokens: int,
                     stop_ids: frozenset[int] | set[int] = frozenset(), prefix: list[int] | None = None,
                     cache: SkipKVCache | None = None, pad_id: int = 0) -> SpeculativeGeneration:
    """``SkipExecutor.generate`` under a dense plan (same arguments, same prefill, same outputs up to
    the rounding of a block forward vs. single-token steps), each row decoded speculatively with
    `draft`. The returned cache holds every row (as with ``keep_finished``)."""
    _check(draft.plan, max_new_tokens, draft.k)
    ex = executor
    synchronize(ex.device)
    start = time.perf_counter()
    prefill_cost = CostMeter()
    cache, logits, prefix_cache = ex.start_rows(inputs, DENSE_STAGE, max_new_tokens, prefix, cache, pad_id,
                                                prefill_cost, frozenset())
    synchronize(ex.device)
    prefill_seconds = time.perf_counter() - start
    row_stats = [SpeculativeStats() for _ in inputs]
    stop = frozenset(stop_ids)
    with _verify_blocks_are_decode(ex):
        tokens, last = _speculate(ex, cache, logits, draft.plan, max_new_tokens, draft.k, stop, draft.min_confidence,
                                  _draft_fill(ex, draft.plan, max_new_tokens), row_stats)
    total = SpeculativeStats(prefill_seconds=prefill_seconds, verify_cost=prefill_cost)
    for stats in row_stats:
        total.add(stats)
    synchronize(ex.device)
    return SpeculativeGeneration(tokens=tokens, stopped=["stop" if t[-1] in stop else "length" for t in tokens],
                                 seconds=time.perf_counter() - start, cost=_total_cost(total), cache=cache,
                                 last_logits=torch.cat(last), steps=max(len(t) for t in tokens),
                                 prefix_cache=prefix_cache, stats=total, row_stats=row_stats)
