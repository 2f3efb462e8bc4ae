"""Calibration measurements over the dense reasoner's stage prompts (calibration split only).

- ``StageTexts``: every stage's prompts and dense outputs on calibration questions (prompts start
  with the shared few-shot header).
- ``sublayer_similarity``: LiteStage's / AdaSkip's importance: mean cos(x, h) of each attention
  sub-layer and cos(h, y) of each FFN over the prefill of a stage's prompts. Suite decisions: only
  the tokens after the shared header are averaged (the header is identical for every question and
  would dominate the mean); the mean is over a prompt's tokens, then over prompts.
- ``HarmMeter``: the measured harm of a skip set, KL(dense || skipped) of the next-token
  distributions at the same positions, averaged over tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..engine.executor import CostMeter, SkipExecutor
from ..engine.plan import STAGES, SkipSet, StagePlan
from ..evaluation.header_cache import HeaderCache

SUBLAYERS = ("attn", "ffn")


@dataclass
class StageTexts:
    """Per stage: (question id, prompt ids, generated content ids) of the dense reasoner (stage 2:
    one entry per option), and the shared header every prompt starts with."""

    header: list[int]
    entries: dict[str, list[tuple[str, list[int], list[int]]]] = field(default_factory=dict)

    def prompts(self, stage: str, per_question: bool = False, ids: set[str] | None = None) -> list[list[int]]:
        """A stage's prompts; `per_question` keeps one per question (stage 2: its first option);
        `ids` keeps only those questions."""
        seen, out = set(), []
        for qid, prompt, _ in self.entries.get(stage, []):
            if (per_question and qid in seen) or (ids is not None and qid not in ids):
                continue
            seen.add(qid)
            out.append(prompt)
        return out

    def texts(self, stage: str) -> list[list[int]]:
        """Prompt plus output of each entry (the calibration text of perplexity-based methods)."""
        return [prompt + out for _, prompt, out in self.entries.get(stage, [])]


class CosineProbe:
    """Accumulates, per sub-layer, the mean cosine of the residual stream before and after it:
    per prompt over its valid tokens, then summed over prompts."""

    def __init__(self, num_layers: int) -> None:
        self.sums = {k: torch.zeros(num_layers, dtype=torch.float64) for k in SUBLAYERS}
        self.rows = {k: torch.zeros(num_layers, dtype=torch.float64) for k in SUBLAYERS}

    def __call__(self, layer: int, kind: str, before: torch.Tensor, after: torch.Tensor, valid: torch.Tensor) -> None:
        cos = F.cosine_similarity(before.float(), after.float(), dim=-1)  # [rows, q]
        counts = valid.sum(-1)
        has = counts > 0
        per_row = (cos * valid).sum(-1)[has] / counts[has]
        self.sums[kind][layer] += float(per_row.double().sum())
        self.rows[kind][layer] += int(has.sum())


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def prefill_after_header(ex: SkipExecutor, header: HeaderCache, prompts: list[list[int]], plan: StagePlan,
                          logits: str = "none", probe=None) -> torch.Tensor | None:
    """Prefill the prompts (all starting with the header) from copies of the header's cache."""
    cache, _ = header.copies(plan, 0, len(prompts))
    n = len(header.ids)
    return ex.prefill(cache, [p[n:] for p in prompts], plan, 0, CostMeter(), logits=logits, probe=probe)


def sublayer_similarity(ex: SkipExecutor, texts: StageTexts, batch_size: int = 8,
                        log: Callable[[str], None] | None = None) -> dict[str, dict[str, list[float]]]:
    """Per stage: {"attn": [L], "ffn": [L]} mean input/output cosine over the stage's dense prefills;
    `log` gets a line per stage (the pass runs for minutes on a 200-item calibration set)."""
    header = HeaderCache(ex, texts.header)
    out = {}
    for stage in STAGES:
        start = time.perf_counter()
        out.update(merged_importance([probe_sums(ex, header, texts, batch_size, stages=(stage,))]))
        if log is not None:
            log(f"[search] importance: {stage}'s {len(texts.prompts(stage))} dense prefills in "
                f"{time.perf_counter() - start:.0f} s")
    return out


def probe_sums(ex: SkipExecutor, header: HeaderCache, texts: StageTexts, batch_size: int = 8,
               stages: tuple[str, ...] = STAGES) -> dict:
    """Per stage, the CosineProbe's raw sums and row counts over the stage's dense prefills: parts
    of one pass that `merged_importance` adds up (the search measures them batch by batch)."""
    out = {}
    for stage in stages:
        probe = CosineProbe(ex.num_layers)
        for chunk in _chunks(texts.prompts(stage), batch_size):
            prefill_after_header(ex, header, chunk, StagePlan(), probe=probe)
        out[stage] = {"sums": {k: probe.sums[k].tolist() for k in SUBLAYERS},
                      "rows": {k: probe.rows[k].tolist() for k in SUBLAYERS}}
    return out


def merged_importance(parts: list[dict]) -> dict[str, dict[str, list[float]]]:
    """sublayer_similarity's result from `probe_sums` parts: per stage and sub-layer, the summed
    cosines over the summed rows."""
    out = {}
    for stage in parts[0]:
        out[stage] = {}
        for k in SUBLAYERS:
            sums = [sum(p[stage]["sums"][k][j] for p in parts) for j in range(len(parts[0][stage]["sums"][k]))]
            rows = [sum(p[stage]["rows"][k][j] for p in parts) for j in range(len(sums))]
            out[stage][k] = [x / max(r, 1.0) for x, r in zip(sums, rows)]
    return out


def accumulate(per_stage: dict[str, dict[str, list[float]]]) -> dict[str, list[float]]:
    """LiteStage's accumulation: the sum over stages of each sub-layer's similarity."""
    stages = list(per_stage.values())
    return {k: [sum(s[k][j] for s in stages) for j in range(len(stages[0][k]))] for k in SUBLAYERS}


def cosine_ranking(scores: dict[str, list[float]], granularity: str = "sublayer") -> list[tuple[str, int]]:
    """Units ordered least important first (highest similarity). Sub-layers: ("attn"|"ffn", j);
    whole layers: ("layer", j) by the sum of the layer's two similarities. Ties keep index order."""
    if granularity == "layer":
        units = [("layer", j) for j in range(len(scores["attn"]))]
        value = {u: scores["attn"][u[1]] + scores["ffn"][u[1]] for u in units}
    else:
        units = [(k, j) for j in range(len(scores["attn"])) for k in SUBLAYERS]
        value = {u: scores[u[0]][u[1]] for u in units}
    return sorted(units, key=lambda u: -value[u])


def skip_set(units: list[tuple[str, int]] | list[list], n: int | None = None) -> SkipSet:
    """The skip set of the first `n` ranked units (all when None)."""
    attn, ffn = set(), set()
    for kind, j in list(units)[:n]:
        if kind in ("attn", "layer"):
            attn.add(int(j))
        if kind in ("ffn", "layer"):
            ffn.add(int(j))
    return SkipSet.of(attn, ffn)


class HarmMeter:
    """KL(dense || skipped) of next-token distributions over the tokens after the header of a fixed
    set of prompts; dense's log-probabilities are computed once and kept."""

    def __init__(self, ex: SkipExecutor, header_ids: list[int], prompts: list[list[int]], batch_size: int = 4) -> None:
        self.ex = ex
        self.header = HeaderCache(ex, header_ids, max_entries=2)
        self.chunks = list(_chunks(prompts, batch_size))
        self.dense = [self._logprobs(chunk, SkipSet()) for chunk in self.chunks]
        self.passes = 0

    def _logprobs(self, chunk: list[list[int]], skip: SkipSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities at the valid positions after the header: [tokens, vocab], and validity."""
        logits = prefill_after_header(self.ex, self.header, chunk, StagePlan.static(skip), logits="all")
        n = len(self.header.ids)
        width = logits.shape[1]
        valid = torch.zeros(len(chunk), width, dtype=torch.bool)
        for r, p in enumerate(chunk):
            valid[r, width - (len(p) - n):] = True
        return torch.log_softmax(logits[valid.to(logits.device)].float(), dim=-1), valid

    @property
    def tokens(self) -> int:
        return sum(int(valid.sum()) for _, valid in self.dense)

    def kl(self, skip: SkipSet) -> float:
        """Mean KL(dense || skip) in nats per token."""
        if not skip:
            return 0.0
        self.passes += 1
        total = 0.0
        for chunk, (dense_lp, _) in zip(self.chunks, self.dense):
            lp, _ = self._logprobs(chunk, skip)
            total += float(F.kl_div(lp, dense_lp, log_target=True, reduction="sum"))
        return total / max(self.tokens, 1)

    def single_harms(self, units: list[tuple[str, int]], progress=None) -> dict[tuple[str, int], float]:
        """Each unit skipped alone."""
        out = {}
        for i, u in enumerate(units, 1):
            out[u] = self.kl(skip_set([u]))
            if progress and (i % 10 == 0 or i == len(units)):
                progress(f"harm profile: {i}/{len(units)} single skips")
        return out


def unit_similarity(scores: dict[str, list[float]], unit: tuple[str, int]) -> float:
    """A unit's accumulated similarity (a whole layer: the sum of its two sub-layers')."""
    kind, j = unit
    return scores["attn"][j] + scores["ffn"][j] if kind == "layer" else scores[kind][j]


def ranking_vs_harm(units: list[tuple[str, int]], singles: dict[tuple[str, int], float],
                    scores: dict[str, list[float]]) -> dict:
    """Each unit's single-skip KL beside its cosine similarity, and the Spearman correlation of the
    dissimilarity (1 - importance rank) with the measured harm."""
    from scipy.stats import spearmanr

    similarity = [unit_similarity(scores, u) for u in units]
    rho = spearmanr([-s for s in similarity], [singles[u] for u in units]).statistic
    return {"profile": [{"unit": list(u), "kl": singles[u], "similarity": s} for u, s in zip(units, similarity)],
            "spearman_dissimilarity_vs_kl": float(rho)}


def iterative_ranking(harm: HarmMeter, start: list[tuple[str, int]], length: int,
                      pool: int | None = None, progress=None) -> list[tuple[str, int]]:
    """SLEB-style greedy ranking: repeatedly add the unit whose addition to the units chosen so far
    gives the lowest joint KL, re-measuring after each addition. Candidates each round: the first
    `pool` not-yet-chosen units of `start` (all when None); after `length` units the rest of `start`
    follows in its order."""
    chosen: list[tuple[str, int]] = []
    for _ in range(min(length, len(start))):
        remaining = [u for u in start if u not in chosen]
        candidates = remaining[:pool] if pool else remaining
        scores = {u: harm.kl(skip_set(chosen + [u])) for u in candidates}
        best = min(candidates, key=lambda u: (scores[u], candidates.index(u)))
        chosen.append(best)
        if progress:
            progress(f"iterative ranking: {len(chosen)}/{length} {best} joint KL {scores[best]:.4f}")
    return chosen + [u for u in start if u not in chosen]
