"""SLEB (Song et al., ICML 2024, arXiv 2402.09025; code jiwonsong-dev/SLEB): remove transformer
blocks greedily. Each round, every remaining candidate block is switched off in turn in the current
(already pruned) model and the calibration NLL is measured; the block whose removal raises it least
is removed, and the next round re-scores the rest (the paper's "metric 3").

As in the reference: the first and the last remaining block are never candidates
(`early_barrier = latter_barrier = 1`, so blocks 0 and L-1 always run), ties go to the lower block.
Suite decisions: the calibration text is the dense reasoner's prompt plus output of every stage on
the calibration questions (stage 2: one per option) instead of 128 x 2048 wikitext2 tokens; the
NLL is that of next-token prediction over the tokens after the shared few-shot header (each row
predicts its tokens 2.. from their predecessors; the header is identical for every prompt); the
search removes `--max-skip` blocks (default: half the layers, the range a k sweep needs) and writes
the removal order with the perplexity after each removal; `run --k K` removes the first K. A search
whose `--out` already holds a policy of the same search with fewer removals continues its order
(after checking that its last NLL reproduces) instead of repeating its rounds.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from litestage_bench.engine.executor import SkipExecutor
from litestage_bench.engine.plan import SkipSet, StagePlan
from litestage_bench.evaluation.header_cache import HeaderCache
from litestage_bench.methods.calibration import prefill_after_header
from litestage_bench.methods.registry import register, register_search

from .common import (Baseline, all_stage_texts, calibrate, check_k, chunks, layer_list, policy_record, section,
                     skip_layers_plan)

DEFAULT_LIMIT = 50  # calibration questions: LiteStage's default, so both see the same items
EARLY_BARRIER = 1  # the reference's defaults
LATTER_BARRIER = 1
NLL_BATCH = 4  # rows per forward: [rows, tokens, vocab] logits are kept for the loss


class NLLMeter:
    """Mean next-token NLL (nats per token) of the model with some layers removed, over fixed texts."""

    def __init__(self, ex: SkipExecutor, header: list[int], texts: list[list[int]], batch_size: int = NLL_BATCH) -> None:
        self.ex = ex
        self.header = HeaderCache(ex, header, max_entries=2)
        self.chunks = list(chunks(texts, batch_size))
        n = len(header)
        self.tokens = sum(max(len(t) - n - 1, 0) for t in texts)
        self.passes = 0

    def nll(self, removed: SkipSet) -> float:
        self.passes += 1
        plan = StagePlan.static(removed)
        n = len(self.header.ids)
        total = 0.0
        for chunk in self.chunks:
            logits = prefill_after_header(self.ex, self.header, chunk, plan, logits="all")
            rows, width = logits.shape[:2]
            ids = torch.zeros(rows, width, dtype=torch.long, device=logits.device)
            valid = torch.zeros(rows, width, dtype=torch.bool, device=logits.device)
            for r, seq in enumerate(chunk):
                body = seq[n:]
                ids[r, width - len(body):] = torch.tensor(body, device=logits.device)
                valid[r, width - len(body):] = True
            # slot j predicts slot j + 1; rows are left-padded, so both slots valid = same row's text
            pairs = valid[:, :-1] & valid[:, 1:]
            scores = logits[:, :-1][pairs].float()  # float32 log-softmax: no [tokens, vocab] float64 copy
            target = scores.gather(-1, ids[:, 1:][pairs][:, None]).squeeze(-1)
            total -= float((target - torch.logsumexp(scores, dim=-1)).double().sum())
        return total / max(self.tokens, 1)


def removal_order(meter: NLLMeter, num_layers: int, count: int, early_barrier: int = EARLY_BARRIER,
                  latter_barrier: int = LATTER_BARRIER, log: Callable[[str], None] = print,
                  prior: dict[str, Any] | None = None) -> dict[str, Any]:
    """SLEB's greedy rounds: the removal order, the NLL after each removal and every round's scores.

    ``prior`` (the findings of an earlier search on the same texts) supplies the first rounds: the
    rounds are greedy and deterministic, so continuing its order equals searching from scratch."""
    prior = prior or {}
    removed, nlls, rounds = (list(prior.get(key, [])) for key in ("removal_order", "nll", "rounds"))
    alive = [j for j in range(num_layers) if j not in removed]
    for round_no in range(len(removed) + 1, count + 1):
        candidates = alive[early_barrier:len(alive) - latter_barrier]
        if not candidates:
            break
        start = time.perf_counter()
        scores = {candidates[0]: meter.nll(SkipSet.layers(removed + [candidates[0]]))}
        took = time.perf_counter() - start
        log(f"[search] sleb: round {round_no}/{count}: {len(candidates)} candidates, {took:.1f} s per NLL pass "
            f"(about {took * len(candidates) / 60:.1f} min per round)")
        scores.update({j: meter.nll(SkipSet.layers(removed + [j])) for j in candidates[1:]})
        best = min(candidates, key=lambda j: (scores[j], j))
        removed.append(best)
        alive.remove(best)
        nlls.append(scores[best])
        rounds.append({str(j): s for j, s in scores.items()})
        log(f"[search] sleb: removed block {best} ({len(removed)}/{count}), perplexity {math.exp(scores[best]):.3f}")
    return {"removal_order": removed, "nll": nlls, "perplexity": [math.exp(x) for x in nlls], "rounds": rounds}


@register("sleb")
class SLEB(Baseline):
    name = "sleb"
    needs_search = True
    unit = "blocks to remove (SLEB's removal order)"
    reference = "Song et al., ICML 2024, arXiv 2402.09025; code jiwonsong-dev/SLEB"

    def read_params(self, policy: dict[str, Any]) -> dict[str, Any]:
        layer_list(policy, "removal_order", self.name)
        return {"phase": "all", "calibration": section(policy, "calibration", self.name).get("n"),
                "barriers": section(policy, "options", self.name).get("barriers")}

    def check_k(self, num_layers: int) -> None:
        found = len(self.policy["removal_order"])
        check_k(self.k, found, self.name, self.unit, f" (the policy holds the first {found} removals; search with "
                                                     f"a larger --max-skip for more)")

    def stage_plan(self, num_layers: int) -> StagePlan:
        layers = self.policy["removal_order"][:self.k]
        ppl = self.policy.get("perplexity") or []
        self.details = {"layers": sorted(layers), "removal_order": layers,
                        "calibration_perplexity": (ppl[self.k - 1] if self.k <= len(ppl) else None) if self.k
                        else self.policy.get("dense_perplexity")}
        return skip_layers_plan(layers, "all")


@register_search("sleb")
def search(session, bench: str, args, config, command: str, log) -> dict:
    cal = calibrate(session, bench, args, config, "sleb", DEFAULT_LIMIT, log)
    layers = cal.ex.num_layers
    most = max(layers - EARLY_BARRIER - LATTER_BARRIER, 0)
    count = min(args.max_skip if args.max_skip is not None else layers // 2, most)
    texts = all_stage_texts(cal.texts)
    meter = NLLMeter(cal.ex, cal.texts.header, texts)
    log(f"[search] sleb: {count} removals, NLL over {meter.tokens} tokens of {len(texts)} stage texts")
    dense = meter.nll(SkipSet())
    options = {"limit": len(cal.items), "seed": args.seed, "removals": count,
               "barriers": {"early": EARLY_BARRIER, "latter": LATTER_BARRIER},
               "text": "every stage's prompt + dense output, next-token NLL of the tokens after the shared header"}
    fresh = policy_record("sleb", session, bench, config, cal, command, options)
    out = getattr(args, "out", None)
    prior = continuable(Path(out), fresh, meter, count, log) if out else None
    found = removal_order(meter, layers, count, log=log, prior=prior)
    record = policy_record("sleb", session, bench, config, cal, command, options, **found,
                           dense_nll=dense, dense_perplexity=math.exp(dense), nll_tokens=meter.tokens,
                           nll_passes=meter.passes)
    if prior:
        # the cost of the whole removal order: the earlier search's rounds plus this one's
        record["continued_from"] = {"removals": len(prior["removal_order"]), "search_cost": prior["search_cost"],
                                    "command": prior.get("command")}
        record["search_cost"]["wall_seconds"] += prior["search_cost"].get("wall_seconds", 0.0)
    return record


# what must match for an earlier policy's rounds to be this search's first rounds
SAME_SEARCH = ("method", "model", "num_layers", "dtype", "bench", "reasoner_config", "calibration")


def continuable(path: Path, fresh: dict[str, Any], meter: NLLMeter, count: int,
                log: Callable[[str], None]) -> dict[str, Any] | None:
    """The earlier SLEB policy at ``path`` when this search extends it: the same model, data,
    calibration items and options except a larger removal count, and its last NLL reproduced by
    one pass here (the same texts and numerics). Otherwise None: the search starts from scratch."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or not isinstance(old.get("options", {}), dict):  # not a SLEB policy: start afresh
        return None
    fresh = json.loads(json.dumps(fresh))  # tuples as lists, as in the file
    same_options = {k: v for k, v in old.get("options", {}).items() if k != "removals"} == \
        {k: v for k, v in fresh["options"].items() if k != "removals"}
    order = old.get("removal_order") or []
    if not (same_options and all(old.get(k) == fresh[k] for k in SAME_SEARCH) and 0 < len(order) < count
            and len(old.get("nll") or []) == len(order) and len(old.get("rounds") or []) == len(order)):
        return None
    again = meter.nll(SkipSet.layers(order))
    # float32 sums differ across CPUs in the last digits; another text or model moves the NLL far more
    if not math.isclose(again, old["nll"][-1], rel_tol=1e-5):
        log(f"[search] sleb: {path} has another NLL for its removals ({old['nll'][-1]:.6f}, here {again:.6f}): "
            "searching from scratch")
        return None
    log(f"[search] sleb: continuing {path} after its {len(order)} removals {order}")
    return old

