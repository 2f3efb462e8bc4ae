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

Done: ``generate_speculative`` (draft under a ``StagePlan``'s decode sets and schedule, dense verify,
optional confidence-based draft stop as in Draft & Verify) with per-generation ``SpeculativeStats``.
Remains: the methods ``selfspec`` (a searched draft set, Draft & Verify / SWIFT style) and
``litestage-spec`` (LiteStage's per-stage set as the draft), reasoner integration (stage caches,
shared prefixes, batched options: verification here is batch 1 and starts from an empty cache),
records metrics (acceptance, draft/verify time), and an adaptive threshold (Draft & Verify adjusts
its own). Measured so far (scripts/speculative_acceptance.py): correct tokens always, but no
speed-up for SmolLM2-135M on one CPU thread, where a draft forward skipping a few attention
sub-layers costs nearly a dense step and a verify block more (details in the README).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from .executor import CostMeter, Generation, SkipExecutor, synchronize
from .plan import DENSE_STAGE, SkipSet, StagePlan


@dataclass
class SpeculativeStats:
    """Counts and times of one speculative generation. A verify step is one dense block forward;
    `accept_lengths` holds the drafts it accepted (the verifier's own next token not counted)."""

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

    def to_dict(self) -> dict:
        return {"verify_steps": self.verify_steps, "drafted": self.drafted, "accepted": self.accepted,
                "accept_lengths": list(self.accept_lengths), "confidence_stops": self.confidence_stops,
                "acceptance_rate": self.acceptance_rate, "accepted_per_step": self.accepted_per_step,
                "tokens_per_step": self.tokens_per_step, "prefill_seconds": self.prefill_seconds,
                "draft_seconds": self.draft_seconds, "verify_seconds": self.verify_seconds,
                "draft_flops": self.draft_cost.executed, "verify_flops": self.verify_cost.executed}


@dataclass
class SpeculativeGeneration(Generation):
    """A batch-1 ``Generation`` (tokens, stop reason, cache as ``generate`` leaves it) plus stats.
    `cost` sums every forward (prefill, drafts, verification): tokens are processed more than once,
    so compare `cost.executed` with dense's rather than reading `cost.fraction`."""

    stats: SpeculativeStats = field(default_factory=SpeculativeStats)


@torch.inference_mode()
def generate_speculative(executor: SkipExecutor, prompt: list[int], draft: StagePlan, max_new_tokens: int,
                         k: int = 4, stop_ids: frozenset[int] | set[int] = frozenset(),
                         min_confidence: float | None = None) -> SpeculativeGeneration:
    """Dense greedy decoding of `prompt`, drafted under `draft` and verified dense.

    Generated token j is drafted under ``draft.skip_at(j)`` (with its replacement factors); the
    draft's prefill set is unused (the prompt runs dense: verification reads its keys/values).
    `k`: drafts per round at most. `min_confidence`: end a round early once a draft's max softmax
    probability is below it (that draft is still verified); None never ends early.

    Batch 1 only: rows would accept different numbers of drafts per round, so their caches would
    advance by different lengths. Exact batched verification is later work; the cache has what it
    needs: draft all rows in the same slots, ``truncate`` back batch-wide, verify one [rows, 1+k]
    block (rows with shorter drafts fed masked padding), then cut each row with ``keep_first`` (the
    rejected slots stay behind as padding, so rounds cost k+1 slots each).
    """
    if max_new_tokens < 1 or k < 1:
        raise ValueError(f"need max_new_tokens >= 1 and k >= 1, got {max_new_tokens} and {k}")
    if draft.dynamic_ffn is not None:
        raise ValueError("a draft plan with per-token FFN rules (dynamic_ffn) is not supported")
    if not prompt:
        raise ValueError("empty prompt")
    ex = executor
    device = ex.device
    stats = SpeculativeStats()
    stop = frozenset(stop_ids)
    # attention layers the draft skips at one step and runs at a later one need keys/values
    fill = ex.fill_layers(dataclasses.replace(draft, prefill=draft.skip_at(0)), max_new_tokens)
    dense = SkipSet()

    synchronize(device)
    start = time.perf_counter()
    cache = ex.new_cache(1, len(prompt) + max_new_tokens + k + 1)
    ids = torch.tensor([prompt], device=device)
    logits = ex.forward(cache, ids, torch.ones_like(ids, dtype=torch.bool), dense, DENSE_STAGE,
                        stats.verify_cost)[:, -1]
    out = [int(logits.argmax(-1))]
    last_logits = logits
    synchronize(device)
    stats.prefill_seconds = time.perf_counter() - start
    one = torch.ones(1, 1, dtype=torch.bool, device=device)

    while out[-1] not in stop and len(out) < max_new_tokens:
        # the cache holds the prompt and out[:-1]; out[-1] is the pending (not yet fed) token
        base = cache.length
        # drafting d tokens can yield d + 1, so draft one fewer than still wanted (0: a plain dense step)
        budget = min(k, max_new_tokens - len(out) - 1)
        drafts: list[int] = []
        t0 = time.perf_counter()
        feed = out[-1]
        for j in range(budget):
            step_logits = ex.forward(cache, torch.tensor([[feed]], device=device), one, draft.skip_at(len(out) - 1 + j),
                                     draft, stats.draft_cost, fill=fill)[0, -1]
            feed = int(step_logits.argmax(-1))
            drafts.append(feed)
            if feed in stop:  # nothing after a stop token is wanted
                break
            if min_confidence is not None and float(step_logits.softmax(-1).max()) < min_confidence:
                stats.confidence_stops += 1
                break
        synchronize(device)
        t1 = time.perf_counter()
        stats.draft_seconds += t1 - t0

        cache.truncate(base)  # drafted entries are not the dense model's: recompute all layers
        block = torch.tensor([[out[-1], *drafts]], device=device)
        verify = ex.forward(cache, block, torch.ones_like(block, dtype=torch.bool), dense, DENSE_STAGE,
                            stats.verify_cost, logits="all")[0]
        choices = verify.argmax(-1).tolist()
        n = 0
        while n < len(drafts) and drafts[n] == choices[n]:
            n += 1
        cache.truncate(base + 1 + n)  # keep the pending token and the accepted drafts
        synchronize(device)
        stats.verify_seconds += time.perf_counter() - t1
        stats.drafted += len(drafts)
        stats.accept_lengths.append(n)

        for i in range(n + 1):  # accepted drafts equal choices[:n]; choices[n] is the dense next token
            out.append(choices[i])
            last_logits = verify[i:i + 1]
            if choices[i] in stop or len(out) >= max_new_tokens:
                break
    # a stop token or the cap may end the output inside the accepted drafts: feed nothing past out[:-1]
    cache.truncate(len(prompt) + len(out) - 1)
    synchronize(device)
    cost = CostMeter()
    cost.add(stats.verify_cost)
    cost.add(stats.draft_cost)
    return SpeculativeGeneration(tokens=[out], stopped=["stop" if out[-1] in stop else "length"],
                                 seconds=time.perf_counter() - start, cost=cost, cache=cache,
                                 last_logits=last_logits, steps=len(out), stats=stats)
