"""Lossless skipping: self-speculative methods whose drafts skip sub-layers and whose answers are dense's.

Every stage of these methods computes dense; a drafted stage decodes self-speculatively (draft up
to k tokens under a skip set, verify them with one dense forward, keep the agreeing prefix:
``engine/speculative.py``), so only speed depends on the draft.

- ``selfspec`` (the baseline, after Draft & Verify / Self-Speculative Decoding): one draft skip set
  and one k for every stage.
- ``litestage-spec``: LiteStage's stage-wise budget with the verifier on. Each stage gets its own
  draft (or none), chosen for its own measured latency.

The search (``search_drafts``, shared by both) ranks sub-layers as LiteStage does: the cosine
importance over the dense stage prefills of the calibration split, or the ranking of a committed
LiteStage policy (``--ranking-from``). Then it times candidate drafts (the top-n units, n in
`skips`, with each k in `ks`) against dense, interleaved on the timed calibration items. One run
of a candidate drafts every stage at once. The stages' outputs are dense's whatever the draft, so
each stage's time depends only on its own draft, and one run measures all three stages.
- selfspec takes the candidate with the highest total speedup; it always drafts.
- litestage-spec gives a stage the candidate with its highest stage speedup, but only when that
  speedup's 95% lower bound is above 1. Otherwise the stage stays dense (no draft).
The measured table is cached on disk, keyed on the code, the machine and the options. So a search
for the second method, with the same options, reuses the first one's measurements.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.code_version import code_version
from ..core.errors import UserError
from ..core.schema import Checker
from ..engine.plan import DENSE, STAGES, Draft, SkipPlan, StagePlan, check_skip_set
from ..evaluation.runner import evaluate_items, model_facts, time_items
from ..records.drafting import summarize_drafting
from ..records.fidelity import item_fidelity
from ..records.results import atomic_write, machine_info
from ..records.timing import paired_speedup
from .calibration import StageTexts, accumulate, cosine_ranking, skip_set, sublayer_similarity
from .litestage import calibration_items, check_policy_model, config_sha
from .registry import Method, ModelFacts, load_policy, register_search

POLICY_SCHEMA_VERSION = 1
SELFSPEC, LITESTAGE_SPEC = "selfspec", "litestage-spec"


# ------------------------------------------------------------------------------------------------
# the methods


def _check_draft(value: Any, where: str, check: Checker, num_layers: int) -> None:
    draft = check.keys(check.obj(value, where), where, ("skip", "k", "min_confidence"))
    check_skip_set(draft.get("skip"), f"{where}.skip", check, num_layers)
    check.whole(draft.get("k"), f"{where}.k", 1)
    check.number(draft.get("min_confidence"), f"{where}.min_confidence", none_ok=True)


class _DraftMethod(Method):
    """A lossless method: per stage a ``Draft`` (or None: the stage decodes plainly), from its policy."""

    needs_search = True

    def __init__(self, policy: dict[str, Any] | None = None) -> None:
        fix = f"write one with `litestage-bench search --method {self.name} ... --out P.json`"
        if policy is None:
            raise UserError(f"method '{self.name}' needs a policy file", f"{fix}, then pass --policy P.json")
        where = policy.get("path", "the policy")
        if policy.get("method") != self.name or policy.get("schema_version") != POLICY_SCHEMA_VERSION:
            raise UserError(f"{where} is not a {self.name} policy (method {policy.get('method')!r}, schema "
                            f"{policy.get('schema_version')!r})", fix)
        check = Checker(where, f"regenerate it: {fix}")
        layers = check.whole(policy.get("num_layers"), "num_layers", 1)
        check.string(policy.get("model"), "model")
        self.policy = policy
        self.drafts = self._drafts(policy, check, layers)

    def _drafts(self, policy: dict, check: Checker, num_layers: int) -> dict[str, Draft | None]:
        raise NotImplementedError

    def check_model(self, model: str) -> None:
        check_policy_model(self.policy, model)

    def plan(self, facts: ModelFacts) -> SkipPlan:
        check_policy_model(self.policy, facts.name, facts.num_layers)
        return SkipPlan({s: StagePlan(draft=d) for s, d in self.drafts.items() if d is not None}, self.name)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "policy": self.policy.get("path"), "lossless": True,
                "drafts": {s: (d.to_dict() if d else None) for s, d in self.drafts.items()}}


class SelfSpec(_DraftMethod):
    """One draft skip set and draft length for every stage (policy key ``draft``)."""

    name = SELFSPEC

    def _drafts(self, policy, check, num_layers):
        _check_draft(policy.get("draft"), "draft", check, num_layers)
        draft = Draft.from_dict(policy["draft"])
        return {s: draft for s in STAGES}


class LiteStageSpec(_DraftMethod):
    """Per stage its own draft, or none (policy key ``stages.<stage>.draft``, null: no drafting)."""

    name = LITESTAGE_SPEC

    def _drafts(self, policy, check, num_layers):
        stages = check.keys(check.obj(policy.get("stages"), "stages"), "stages", STAGES, "stage")
        drafts = {}
        for s in STAGES:
            value = check.obj(stages.get(s), f"stages.{s}").get("draft")
            if value is not None:
                _check_draft(value, f"stages.{s}.draft", check, num_layers)
            drafts[s] = Draft.from_dict(value) if value is not None else None
        return drafts


# ------------------------------------------------------------------------------------------------
# the search


@dataclass
class DraftSearchOptions:
    """Every choice of the draft search, recorded in the policy."""

    limit: int = 40  # calibration items: the dense pass whose stage prefills rank the sub-layers
    timed: int = 10  # of them timed at batch 1 per candidate, interleaved with dense
    rounds: int = 1
    skips: tuple[int, ...] = (1, 2, 4, 8)  # draft = the top-n units of the ranking
    ks: tuple[int, ...] = (2, 4)  # drafts per verify step at most
    min_confidence: float | None = None  # end a draft round below this max probability (Draft & Verify)
    granularity: str = "sublayer"
    ranking_from: str | None = None  # a LiteStage policy of the same model and benchmark
    batch_size: int = 8
    seed: int = 0

    def check(self) -> None:
        checks = [(self.limit >= 1 and self.rounds >= 1 and self.batch_size >= 1, "limit, rounds and batch size must be >= 1"),
                  (1 <= self.timed <= self.limit, "timed must be within 1..limit"),
                  (bool(self.skips) and min(self.skips) >= 1, "draft skips must be >= 1"),
                  (bool(self.ks) and min(self.ks) >= 1, "draft lengths k must be >= 1"),
                  (self.min_confidence is None or 0 <= self.min_confidence <= 1, "min confidence must be within 0..1"),
                  (self.granularity in ("sublayer", "layer"), "granularity must be 'sublayer' or 'layer'")]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"bad search option: {msg}", "see `litestage-bench search --help`")


def _ranking(session, reasoner, bench: str, items, opts: DraftSearchOptions, log) -> tuple[list, dict]:
    """The sub-layer ranking (least important first) and where it came from."""
    if opts.ranking_from:
        policy = load_policy(opts.ranking_from)
        if policy.get("method") != "litestage" or not isinstance(policy.get("ranking"), list):
            raise UserError(f"--ranking-from {opts.ranking_from} is not a LiteStage policy with a ranking",
                            "pass a policy written by `litestage-bench search --method litestage`")
        check_policy_model(policy, session.loaded.name, session.executor.arch.num_layers)
        if policy.get("bench") != bench:
            raise UserError(f"--ranking-from {opts.ranking_from} was searched on {policy.get('bench')!r}, not {bench!r}",
                            "pass the LiteStage policy of the same benchmark")
        return [tuple(u) for u in policy["ranking"]], {"source": opts.ranking_from, "sha": config_sha(policy)}
    with reasoner.tracing() as trace:
        evaluate_items(reasoner, DENSE, {}, items, opts.batch_size, f"{session.loaded.name} {bench} dense")
    texts = StageTexts(reasoner.header.ids if reasoner.header else [], trace)
    log(f"[search] importance over the dense stage prefills ({sum(len(texts.prompts(s)) for s in STAGES)} prompts)")
    scores = accumulate(sublayer_similarity(session.executor, texts, opts.batch_size))
    return cosine_ranking(scores, opts.granularity), {"source": "cosine", "scores": scores}


def drafted_plan(draft: Draft) -> SkipPlan:
    return SkipPlan({s: StagePlan(draft=draft) for s in STAGES}, "draft")


def _measure(reasoner, timed_items, draft: Draft, rounds: int) -> dict:
    """One candidate timed against dense (interleaved): total and per-stage speedups with their
    95% CIs, the drafting metrics, and how many timed items came out identical to dense."""
    clock = time_items(reasoner, {"dense": (DENSE, {}), "draft": (drafted_plan(draft), {})}, timed_items,
                       warmup=0, progress=False, rounds=rounds)
    dense, drafted = clock["dense"], clock["draft"]
    total = paired_speedup(dense, drafted)
    stages = {s: paired_speedup(dense, drafted, stage=s) for s in STAGES}
    drafting = summarize_drafting(drafted)
    answer_rule = reasoner.cfg.answer_rule
    return {"speedup": total["speedup"], "ci95": list(total["ci95"]),
            "stages": {s: {"speedup": r["speedup"], "ci95": list(r["ci95"]),
                           **{m: drafting[s][m] for m in ("tokens_per_step", "acceptance_rate", "draft_share")}}
                       for s, r in stages.items()},
            "identical": sum(item_fidelity(d, m, answer_rule)["identical"] for d, m in zip(dense, drafted)),
            "n_timed": len(drafted)}


def search_drafts(session, bench: str, opts: DraftSearchOptions, config, *, data_dir=None,
                  cache_dir: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Rank sub-layers, then time every candidate draft against dense; the shared measurement of
    both lossless methods (cached on disk by code, machine and options)."""
    import torch

    from ..engine.models import cache_root, model_label

    opts.check()
    started = time.perf_counter()
    items, timed_items = calibration_items(bench, opts.limit, opts.timed, opts.seed, data_dir)
    name = session.loaded.name
    key = {"code": code_version(), "model": name, "source": session.loaded.source, "dtype": session.loaded.dtype,
           "numerics": session.loaded.numerics, "bench": bench, "items": [q.id for q in items],
           "config": config.to_dict(), "options": asdict(opts), "cpu": machine_info().get("cpu"),
           "threads": torch.get_num_threads(), "device": str(session.executor.device)}
    cache_dir = cache_dir or cache_root() / "search" / f"{model_label(name)}-{bench}-drafts"
    cached = cache_dir / f"{config_sha(key)}.json"
    if cached.is_file():
        log(f"[search] {name} {bench}: the draft candidates measured earlier with these settings ({cached})")
        found = json.loads(cached.read_text())
        found["search_cost"]["read_from"] = str(cached)  # this search measured nothing itself
        return found

    reasoner = session.reasoner(bench, config, data_dir)
    log(f"[search] {name} {bench}: ranking sub-layers on {len(items)} calibration items")
    ranking, ranking_source = _ranking(session, reasoner, bench, items, opts, log)
    for q in items[:1]:  # warm-up (allocator, header cache), not timed
        reasoner.solve(q, DENSE)
        reasoner.solve(q, drafted_plan(Draft(StagePlan(decode=skip_set(ranking, opts.skips[0])), opts.ks[0])))
    rows = []
    for n in opts.skips:
        for k in opts.ks:
            draft = Draft(StagePlan(decode=skip_set(ranking, n)), k, opts.min_confidence)
            row = {"n_skip": n, "k": k, "min_confidence": opts.min_confidence, "draft": draft.to_dict(),
                   **_measure(reasoner, timed_items, draft, opts.rounds)}
            rows.append(row)
            stage_text = " ".join(f"{s[0].upper()} {row['stages'][s]['speedup']:.2f}x"
                                  f"/{row['stages'][s]['acceptance_rate'] or 0:.2f}" for s in STAGES)
            log(f"[search] draft n={n} k={k}: {row['speedup']:.2f}x [{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}] "
                f"(stage speedup/acceptance: {stage_text}), identical {row['identical']}/{row['n_timed']}")
    result = {"model": name, "num_layers": model_facts(session.executor, name).num_layers,
              "dtype": session.loaded.dtype, "numerics": session.loaded.numerics, "bench": bench,
              "options": asdict(opts), "reasoner_config": config.to_dict(),
              "calibration": {"split": "calib", "n": len(items), "ids": [q.id for q in items],
                              "timed_ids": [q.id for q in timed_items]},
              "ranking": [list(u) for u in ranking], "ranking_source": ranking_source, "candidates": rows,
              "search_cost": {"wall_seconds": time.perf_counter() - started, "candidates_measured": len(rows),
                              "cache": str(cached)},
              "machine": machine_info(), "code_version": key["code"]}
    atomic_write(cached, lambda fh: json.dump(result, fh, indent=1))
    return result


def choose_selfspec(rows: list[dict]) -> dict:
    """The candidate with the highest measured total speedup (selfspec always drafts)."""
    return max(rows, key=lambda r: r["speedup"])


def choose_stagewise(rows: list[dict]) -> dict[str, dict | None]:
    """Per stage, the candidate with the highest stage speedup among those whose 95% lower bound
    is above 1; None (the stage decodes plainly) when no candidate is surely faster than dense."""
    out: dict[str, dict | None] = {}
    for s in STAGES:
        faster = [r for r in rows if r["stages"][s]["ci95"][0] > 1.0]
        out[s] = max(faster, key=lambda r: r["stages"][s]["speedup"]) if faster else None
    return out


def policy_from_search(method: str, found: dict, command: str) -> dict:
    """The policy file of `method` from a draft search's measured candidates."""
    rows = found["candidates"]
    policy = {"schema_version": POLICY_SCHEMA_VERSION, "method": method, "lossless": True, **found,
              "command": command}
    if method == SELFSPEC:
        best = choose_selfspec(rows)
        policy["draft"] = best["draft"]
        policy["chosen"] = {"n_skip": best["n_skip"], "k": best["k"], "speedup": best["speedup"], "ci95": best["ci95"],
                            "rule": "highest total speedup over the candidates"}
    else:
        chosen = choose_stagewise(rows)
        policy["stages"] = {s: {"draft": r["draft"] if r else None, "n_skip": r["n_skip"] if r else 0,
                                "k": r["k"] if r else None,
                                "speedup": r["stages"][s]["speedup"] if r else None,
                                "ci95": r["stages"][s]["ci95"] if r else None} for s, r in chosen.items()}
        policy["chosen"] = {"rule": "per stage the highest stage speedup whose 95% lower bound is above 1, "
                                    "else no draft"}
    return policy


def options_from_args(args) -> DraftSearchOptions:
    """The draft-search options of parsed `litestage-bench search` arguments."""
    limit = args.limit or DraftSearchOptions.limit
    return DraftSearchOptions(
        limit=limit, timed=args.timed or min(DraftSearchOptions.timed, limit), rounds=args.rounds,
        skips=tuple(args.draft_skips), ks=tuple(args.draft_ks), min_confidence=args.draft_min_confidence,
        granularity=args.granularity, ranking_from=args.ranking_from, batch_size=args.batch_size, seed=args.seed)


def _search_command(method: str):
    def run(session, bench: str, args, config, command: str, log) -> dict:
        found = search_drafts(session, bench, options_from_args(args), config, data_dir=args.data_dir, log=log)
        return policy_from_search(method, found, command)
    return run


register_search(SELFSPEC)(_search_command(SELFSPEC))
register_search(LITESTAGE_SPEC)(_search_command(LITESTAGE_SPEC))
