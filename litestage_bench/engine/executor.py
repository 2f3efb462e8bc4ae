"""The skip executor: one layer loop that runs every method (dense included).

Methods differ only in the ``StagePlan`` they hand in. The executor runs prefill and greedy decode
with its own KV cache (``SkipKVCache``), skips the planned attention / FFN sub-layers (replacing
each by identity or by its input times a factor), counts the executed fraction of sub-layer FLOPs,
and calls a per-token callback with the token's logits so that a method can end a sequence early.

KV policy for skipped attention: a skipped attention sub-layer writes no keys/values ("gap"). That
is exact whenever the layer is never read again in this generation (static sets, SkipDecode's
monotone schedule). If the plan re-activates a layer's attention later in the same generation,
the executor instead writes the keys/values the skipped token would have produced ("fill"), which
equals a no-cache run where skipping only drops the sub-layer's output. What a stage's cache starts
from (empty, the shared few-shot header, or the previous stage's cache) is the reasoner's decision.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .arch import ArchAdapter
from .kvcache import SkipKVCache
from .plan import PREFILL_STEP, DynamicFFN, SkipSet, StagePlan

# on_token(step, logits [rows, vocab], tokens [rows], row_ids [rows]) -> bool tensor [rows]: stop these rows
# (rows still generating; row_ids are their indices in the input, all rows at step 0)
TokenCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# probe(layer, "attn" | "ffn", stream before, stream after, valid [rows, q]): sees every executed sub-layer
SubLayerProbe = Callable[[int, str, torch.Tensor, torch.Tensor, torch.Tensor], None]


# A finished row leaves the batch within this many decode steps (Generation.computed_tokens counts
# the row-steps it costs meanwhile): few enough that an early-stopping row pays at most a handful of
# wasted steps, many enough that rows finishing close together leave in one copy of the cache.
MAX_WAIT_STEPS = 4


@dataclass
class CostMeter:
    """Executed vs. total sub-layer FLOPs (2 x weight parameters per token processed)."""

    executed: float = 0.0
    total: float = 0.0

    @property
    def fraction(self) -> float:
        return self.executed / self.total if self.total else 1.0

    def add(self, other: "CostMeter") -> None:
        self.executed += other.executed
        self.total += other.total


@dataclass
class Generation:
    """Greedy continuations of a batch, with timing and cost."""

    tokens: list[list[int]]  # generated ids per input row (the stop token included when one was hit)
    stopped: list[str]  # per row: "stop" (stop/EOS token), "length", or "callback"
    seconds: float
    cost: CostMeter
    cache: SkipKVCache | None = None  # rows still present at the end (batch-1: the row itself)
    last_logits: torch.Tensor | None = None  # per row still in the batch; keep_finished: every row, NaN for one that left
    steps: int = 0
    prefix_cache: SkipKVCache | None = None  # batch-1 cache holding exactly the shared prefix
    # rows x positions of the decode: each row's first token (from the prefill) plus the rows of every
    # decode forward, finished rows still in the batch (fed padding) included; None: not counted
    computed_tokens: int | None = None
    # the decode forwards' share of `cost` (the prefill's taken off): a static plan's decode costs the
    # same per live row-step, which an early-exit run derived from an exit-off one relies on
    decode_cost: CostMeter | None = None

    def fed_tokens(self, row: int) -> list[int]:
        """Generated ids that were fed back, i.e. that the cache holds (all but the last sampled)."""
        content = self.content_tokens(row)
        return content[:-1] if self.stopped[row] == "length" else content

    def content_tokens(self, row: int) -> list[int]:
        """Generated ids without a trailing stop token."""
        ids = self.tokens[row]
        return ids[:-1] if self.stopped[row] == "stop" and ids else ids

    def unfed_tokens(self, row: int) -> list[int]:
        """Content ids not yet in the cache (the last token of a length-capped row)."""
        return self.tokens[row][-1:] if self.stopped[row] == "length" else []


@dataclass
class _DynamicState:
    """Per-row state of AdaSkip's decode extension during one generation."""

    rule: DynamicFFN
    sims: torch.Tensor  # [rows, layers] running sum of cos(h, h + FFN(h)) over warm-up steps
    steps: int = 0  # warm-up decode steps seen
    skip_rows: torch.Tensor | None = field(default=None)  # [rows, layers], decided after warm-up

    def keep(self, rows: torch.Tensor) -> None:
        self.sims = self.sims[rows]
        if self.skip_rows is not None:
            self.skip_rows = self.skip_rows[rows]

    def decide_after_warmup(self) -> None:
        """Count a warm-up step, or once warm-up is over fix which FFNs each row skips."""
        if self.skip_rows is not None:
            return
        if self.steps < self.rule.warmup_steps:
            self.steps += 1
            return
        mean = self.sims / max(self.steps, 1)
        candidates = torch.zeros(self.sims.shape[1], dtype=torch.bool, device=self.sims.device)
        candidates[list(self.rule.candidates)] = True
        self.skip_rows = (mean >= self.rule.threshold) & candidates


@dataclass
class BlockClock:
    """Seconds and tokens of the multi-token forwards (prompt prefill, answer scoring) while it is
    attached to an executor; the rest of a timed stage is decode."""

    seconds: float = 0.0
    tokens: int = 0


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work, so that a timer reads real elapsed time."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class SkipExecutor:
    """Runs prefill and greedy decode of a causal LM under a skip plan."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.arch = ArchAdapter(model)
        self.device = next(model.parameters()).device
        self.num_layers = self.arch.num_layers
        self.block_clock: BlockClock | None = None  # set by a timed reasoner stage

    def forward(self, cache: SkipKVCache, input_ids: torch.Tensor, valid: torch.Tensor, *args, **kwargs):
        """`_forward`, timed into `block_clock` when one is attached and the block has several tokens."""
        clock = self.block_clock
        if clock is None or input_ids.shape[1] == 1:
            return self._forward(cache, input_ids, valid, *args, **kwargs)
        synchronize(self.device)
        start = time.perf_counter()
        out = self._forward(cache, input_ids, valid, *args, **kwargs)
        synchronize(self.device)
        clock.seconds += time.perf_counter() - start
        clock.tokens += int(valid.sum())
        return out

    # --- one forward over a block of tokens -------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, cache: SkipKVCache, input_ids: torch.Tensor, valid: torch.Tensor, skip: SkipSet,
                plan: StagePlan, meter: CostMeter, logits: str = "last", fill: frozenset[int] = frozenset(),
                dynamic: _DynamicState | None = None, probe: SubLayerProbe | None = None) -> torch.Tensor | None:
        """Process [rows, q] tokens, appending them to the cache. `fill`: attention layers whose
        keys/values must be written even when skipped. `probe`: called with the residual stream
        before and after every executed sub-layer (importance measurements). Returns logits of the
        last (or all) slots."""
        arch = self.arch
        positions = cache.begin(valid)
        q = input_ids.shape[1]
        hidden = arch.embed(input_ids)
        ropes = arch.rope(hidden, positions)
        full_mask = cache.mask(q)
        sliding_mask = None
        real_tokens = float(valid.sum())
        for i in range(self.num_layers):
            mask = full_mask
            if arch.is_sliding(i) and cache.next_pos.max() > arch.sliding_window:
                if sliding_mask is None:
                    sliding_mask = cache.mask(q, arch.sliding_window)
                mask = sliding_mask
            meter.total += real_tokens * (arch.attn_flops[i] + arch.ffn_flops[i])
            if i in skip.attn:
                if i in fill:
                    key, value = arch.kv_only(i, hidden, ropes[i])
                    cache.write(i, key, value)
                    meter.executed += real_tokens * arch.kv_flops[i]
                factor = plan.attn_scale.get(i)
                if factor is not None:
                    hidden = hidden * factor
            else:
                before = hidden
                hidden = hidden + arch.attn_delta(i, hidden, ropes[i], mask, cache)
                meter.executed += real_tokens * arch.attn_flops[i]
                if probe is not None:
                    probe(i, "attn", before, hidden, valid)
            if i in skip.ffn:
                factor = plan.ffn_scale.get(i)
                if factor is not None:
                    hidden = hidden * factor
            elif dynamic is not None and i in dynamic.rule.candidates:
                hidden = self._dynamic_ffn(i, hidden, valid, dynamic, plan, meter)
            else:
                before = hidden
                hidden = hidden + arch.ffn_delta(i, hidden)
                meter.executed += real_tokens * arch.ffn_flops[i]
                if probe is not None:
                    probe(i, "ffn", before, hidden, valid)
        if logits == "none":
            return None
        if logits == "last":
            hidden = hidden[:, -1:]
        return arch.logits(hidden).float()

    def _dynamic_ffn(self, i: int, hidden: torch.Tensor, valid: torch.Tensor, dyn: _DynamicState,
                     plan: StagePlan, meter: CostMeter) -> torch.Tensor:
        """AdaSkip decode extension: per-row FFN skipping decided from warm-up similarities. Cost
        counts the valid tokens of the rows that run it (finished rows fed padding count nothing)."""
        rows = hidden.shape[0]
        row_tokens = valid.sum(-1).to(torch.float64)
        if dyn.skip_rows is not None:
            skip_rows = dyn.skip_rows[:, i]
            n_skip = int(skip_rows.sum())
            factor = plan.ffn_scale.get(i, 1.0)
            if n_skip == rows:
                return hidden * factor
            out = hidden + self.arch.ffn_delta(i, hidden)
            meter.executed += float(row_tokens[~skip_rows.to(row_tokens.device)].sum()) * self.arch.ffn_flops[i]
            if n_skip:
                out = torch.where(skip_rows[:, None, None], hidden * factor, out)
            return out
        out = hidden + self.arch.ffn_delta(i, hidden)
        meter.executed += float(row_tokens.sum()) * self.arch.ffn_flops[i]
        dyn.sims[:, i] += F.cosine_similarity(hidden[:, -1].float(), out[:, -1].float(), dim=-1)
        return out

    # --- generation ------------------------------------------------------------------------------
    def new_cache(self, batch: int, capacity: int = 0) -> SkipKVCache:
        return SkipKVCache(self.num_layers, batch, self.device, capacity)

    def fill_layers(self, plan: StagePlan, max_new_tokens: int) -> frozenset[int]:
        """Attention layers skipped at some step and active at a later one, answer scoring after
        the generation (``StagePlan.scoring_set``) included: they need keys/values."""
        fill: set[int] = set()
        skipped_before: set[int] = set()
        sets = [plan.skip_at(step) for step in range(PREFILL_STEP, max_new_tokens)] + [plan.scoring_set()]
        for skip in sets:
            fill |= skipped_before - skip.attn
            skipped_before |= skip.attn
        return frozenset(fill)

    @torch.inference_mode()
    def generate(self, inputs: list[list[int]], plan: StagePlan, max_new_tokens: int,
                 stop_ids: frozenset[int] | set[int] = frozenset(), prefix: list[int] | None = None,
                 cache: SkipKVCache | None = None, on_token: TokenCallback | None = None,
                 pad_id: int = 0, keep_finished: bool = False) -> Generation:
        """Greedy-decode each input row (rows of unequal length are left-padded).

        `prefix`: prefilled once (batch 1), then every row continues it (stage 2's options).
        `cache`: a cache to continue instead of starting empty. With `prefix` it must hold the
        first `cache.length` prefix tokens (computed under this plan's prefill set) and keeps
        holding exactly the prefix afterwards; without `prefix` its rows are the input rows.
        Finished rows leave the batch in bulk (each time costs a copy of the cache), once at most half
        the rows still run or the earliest of them finished `MAX_WAIT_STEPS` decode steps ago; until
        then they are fed masked padding (changes nothing, costs a row-step each). So a row that stops
        early costs at most `MAX_WAIT_STEPS` more row-steps (`Generation.computed_tokens`).
        `keep_finished`: rows that leave are parked and put back (in their order, padded with masked
        slots) into the returned cache, which then holds every row; otherwise it may lack some.
        """
        if plan.draft is not None:
            raise ValueError("a drafted stage plan decodes with engine.speculative.generate_drafted")
        start = time.perf_counter()
        rows = len(inputs)
        plan_layers = self.fill_layers(plan, max_new_tokens)
        meter = CostMeter()
        cache, logits, prefix_cache = self.start_rows(inputs, plan, max_new_tokens, prefix, cache, pad_id, meter,
                                                      plan_layers)
        prefill_cost = CostMeter(meter.executed, meter.total)
        dynamic = None
        if plan.dynamic_ffn is not None:
            dynamic = _DynamicState(plan.dynamic_ffn, torch.zeros(rows, self.num_layers, device=self.device))

        out: list[list[int]] = [[] for _ in range(rows)]
        stopped = ["length"] * rows
        alive = torch.arange(rows, device=self.device)  # original row index of each cache row
        live = torch.ones(rows, dtype=torch.bool, device=self.device)  # cache rows still generating
        stop_tensor = torch.tensor(sorted(stop_ids), dtype=torch.long, device=self.device)
        step = 0
        computed = rows
        parked: list[tuple[torch.Tensor, SkipKVCache]] = []  # (original rows, their cache) that left
        waiting_since: int | None = None  # the step at which the earliest finished row in the batch stopped
        while True:
            token = logits.argmax(-1)
            finished = torch.isin(token, stop_tensor) if len(stop_tensor) else torch.zeros_like(live)
            finished = finished & live
            halted = self._ask(on_token, step, logits, token, alive, live) if on_token is not None else None
            for r, t, running in zip(alive.tolist(), token.tolist(), live.tolist()):
                if running:
                    out[r].append(t)
            if halted is not None and bool(halted.any()):
                for r in alive[halted & ~finished].tolist():
                    out[r].pop()  # early exit emits EOS instead of this token
                    stopped[r] = "callback"
                finished = finished | halted
            for r in alive[finished].tolist():
                if stopped[r] == "length":
                    stopped[r] = "stop"
            live = live & ~finished
            step += 1
            if step >= max_new_tokens or not bool(live.any()):
                break
            if waiting_since is None and bool(finished.any()):
                waiting_since = step
            if waiting_since is not None and (2 * int(live.sum()) <= len(live)
                                              or step - waiting_since >= MAX_WAIT_STEPS):
                keep = live.nonzero().squeeze(1)
                if keep_finished:
                    gone = (~live).nonzero().squeeze(1)
                    parked.append((alive[gone], cache.select(gone)))
                cache = cache.select(keep)
                alive, token, live = alive[keep], token[keep], live[keep]
                waiting_since = None
                if dynamic is not None:
                    dynamic.keep(keep)
            if dynamic is not None:
                dynamic.decide_after_warmup()
            # decode forward k processes generated token k (token 0 came from the prefill)
            fed = torch.where(live, token, torch.full_like(token, pad_id))
            computed += len(fed)
            logits = self.forward(cache, fed[:, None], live[:, None], plan.skip_at(step - 1), plan, meter,
                                  fill=plan_layers, dynamic=dynamic)[:, -1]
        if parked:
            cache = SkipKVCache.gather_rows([*parked, (alive, cache)])
            # one row of logits per input row, as without parking; a row that left has none of its own
            full = logits.new_full((rows, logits.shape[-1]), float("nan"))
            full[alive] = logits
            logits = full
        synchronize(self.device)
        return Generation(tokens=out, stopped=stopped, seconds=time.perf_counter() - start, cost=meter,
                          cache=cache, last_logits=logits, steps=step, prefix_cache=prefix_cache,
                          computed_tokens=computed, decode_cost=CostMeter(meter.executed - prefill_cost.executed,
                                                                          meter.total - prefill_cost.total))

    def start_rows(self, inputs: list[list[int]], plan: StagePlan, max_new_tokens: int, prefix: list[int] | None,
                   cache: SkipKVCache | None, pad_id: int, meter: CostMeter,
                   fill: frozenset[int]) -> tuple[SkipKVCache, torch.Tensor, SkipKVCache | None]:
        """`generate`'s prefill (see there for `prefix` and `cache`): the cache of the input rows,
        each row's next-token logits [rows, vocab] and the prefix's own batch-1 cache (or None)."""
        room = max(len(x) for x in inputs) + max_new_tokens + 1
        prefix_cache = None
        if prefix:
            base = cache if cache is not None else self.new_cache(1, len(prefix) + room)
            rest = prefix[base.length:]
            if rest:
                shared = torch.tensor([rest], device=self.device)
                self.forward(base, shared, torch.ones_like(shared, dtype=torch.bool), plan.skip_at(PREFILL_STEP),
                             plan, meter, logits="none", fill=fill)
            cache = base.repeat(len(inputs))
            prefix_cache = base
        elif cache is None:
            cache = self.new_cache(len(inputs), room)
        else:
            cache.reserve(room)
        ids, valid = self._left_padded(inputs, pad_id)
        logits = self.forward(cache, ids, valid, plan.skip_at(PREFILL_STEP), plan, meter, fill=fill)[:, -1]
        return cache, logits, prefix_cache

    @staticmethod
    def _ask(on_token: TokenCallback, step: int, logits: torch.Tensor, token: torch.Tensor, alive: torch.Tensor,
             live: torch.Tensor) -> torch.Tensor:
        """The callback sees only rows still generating (finished rows kept in the cache are not
        asked); returns which cache rows it halts."""
        idx = live.nonzero().squeeze(1)
        halted = torch.zeros_like(live)
        halted[idx] = on_token(step, logits[idx], token[idx], alive[idx]).to(halted.device)
        return halted

    @torch.inference_mode()
    def prefill(self, cache: SkipKVCache, inputs: list[list[int]], plan: StagePlan, max_new_tokens: int,
                meter: CostMeter, pad_id: int = 0, logits: str = "none",
                probe: SubLayerProbe | None = None) -> torch.Tensor | None:
        """Append left-padded prompt rows to a cache under the plan's prefill set, as `generate`
        would before decoding `max_new_tokens` (which decides the attention layers to fill).
        `logits="all"` also returns the [rows, width, vocab] logits of the block."""
        ids, valid = self._left_padded(inputs, pad_id)
        cache.reserve(ids.shape[1])
        return self.forward(cache, ids, valid, plan.skip_at(PREFILL_STEP), plan, meter, logits=logits,
                            fill=self.fill_layers(plan, max_new_tokens), probe=probe)

    @torch.inference_mode()
    def extend(self, cache: SkipKVCache, inputs: list[list[int]], plan: StagePlan, meter: CostMeter,
               logits: str = "all", pad_id: int = 0) -> torch.Tensor:
        """Append tokens to existing rows under the plan's scoring set (answer scoring after a
        stage, ``StagePlan.scoring_set``); returns [rows, width, vocab] logits of the left-padded
        block (or the last slot)."""
        ids, valid = self._left_padded(inputs, pad_id)
        cache.reserve(ids.shape[1])
        return self.forward(cache, ids, valid, plan.scoring_set(), plan, meter, logits=logits)

    def _left_padded(self, inputs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, width] ids and validity, each row right-aligned (left padding)."""
        width = max(len(x) for x in inputs)
        ids = torch.full((len(inputs), width), pad_id, dtype=torch.long, device=self.device)
        valid = torch.zeros(len(inputs), width, dtype=torch.bool, device=self.device)
        for r, seq in enumerate(inputs):
            if seq:
                ids[r, width - len(seq):] = torch.tensor(seq, device=self.device)
                valid[r, width - len(seq):] = True
        return ids, valid
