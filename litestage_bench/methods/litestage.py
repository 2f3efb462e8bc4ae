"""LiteStage (Kang, Song, Kim, arXiv 2510.14211): stage-wise sub-layer skipping plus early exit.

Offline, on the calibration split (``search``):
1. importance: mean input/output cosine of every attention and FFN sub-layer over the dense prefill
   of each stage's prompts, kept per stage and summed over the stages into one ranking
   (``calibration.py``); optionally an iterative ranking that re-measures the joint harm after
   each added skip (SLEB-style ablation);
2. a latency-aware budget search: stages from slowest to fastest (measured dense latency); for the
   current stage sweep #skip = 0, step, 2*step, ... (the top-#skip units of the ranking) with the
   other stages' choices fixed; keep the fastest measured setting that meets the target
   (dense accuracy minus a tolerance in points, or a minimum answer agreement with dense);
3. early exit: per stage, the same sweep over confidence thresholds (from the dense run's
   confidence distribution), keeping the fastest that meets the target.
"Fastest" is the highest speedup over dense measured interleaved (dense and the candidate back to
back on the timed items, ``runner.time_items``). "Meets" is a decision at a stated confidence
(``decide``): the candidate's test is paired against dense on the same calibration items, and its
one-sided lower bound must pass (accuracy non-inferiority within the tolerance, or agreement at or
above the minimum). The default calibration size gives the tests a stated power (``target_power``,
recorded in the policy).
Online (``LiteStage``, `run --method litestage --policy P`): the per-stage skip sets and exit rules.

Cost controls: stage outputs a candidate does not change are reused (``StageMemo``; batched accuracy
only, timing always re-runs), an early-exit sweep's recall or analyze runs are derived from the
stage's one exit-off run where float32 makes that exact (``StageMemo.exit_trace``), every stage
starts from the shared-header cache, a candidate's answers come in interim looks and it stops at the
first look where it clearly misses (futility) or already meets at a stricter, alpha-spending
confidence (efficacy; search_decisions.py), a #skip sweep measures every `coarse_step`-th #skip
first and then only the gaps that may hold a meeting one, a sweep stops only after `patience`
candidates in a row clearly miss the target by their upper bounds (search_sweep.py), with a latency
fit of the model x numerics x device x CPU only the finalists by predicted speedup are timed
(search_speed.py), and the dense pass and each measured chunk of a candidate are JSON rows in the
repository (``search_rows.py``), so a search interrupted on one machine resumes on another from the
rows that landed (on another CPU too, where float32 answers are exact: it re-times only), and a code
change that alters dense's outputs measures afresh.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..core.code_version import code_version, timing_code_version
from ..core.errors import UserError
from ..core.schema import Checker
from ..engine.early_exit import CONFIDENCES, ConfidenceExit, ConfidenceRecorder, ExitRule
from ..engine.plan import STAGES, SkipPlan, SkipSet, StagePlan, check_skip_set
from ..evaluation.benchmarks import Question, check_disjoint, check_items, load_split, subset
from ..evaluation.header_cache import HeaderCache
from ..evaluation.reasoner import Callbacks, Reasoner, StageMemo
from ..evaluation.runner import evaluate_items, model_facts, seed_everything, time_items
from ..records.fidelity import aggregate_fidelity, answered_by, most_accurate_rule, rule_hits
from ..records.noise import exact_numerics
from ..records.results import ItemResult, item_to_dict, machine_info
from ..records.timing import paired_speedup
from .calibration import (HarmMeter, StageTexts, accumulate, cosine_ranking, iterative_ranking, merged_importance,
                          probe_sums, ranking_vs_harm, skip_set)
from .registry import Method, ModelFacts, register, register_search
from .search_decisions import (decide, look_ends, look_plan, look_test, merge_answer_counts,  # noqa: F401
                               run_looks, target_power)  # (decide, look_ends, look_test: re-exported)
from .search_rows import (RowStore, canary, default_store, dense_row_items, generations_canary, ids_sha,
                          item_columns, model_source)
from .search_speed import SpeedPredictor, find_predictor
from .search_sweep import coarse_to_fine, fastest_meeting, finalists, meets, sweep, threshold_sweep  # noqa: F401 (re-exported)

POLICY_SCHEMA_VERSION = 1
CHUNK_QUIET_SECONDS = 60.0  # a candidate's chunk or timing: a line per batch or question, at most one a minute


# ------------------------------------------------------------------------------------------------
# the method


def plan_from_sets(sets: dict[str, SkipSet], name: str = "litestage") -> SkipPlan:
    """Static per-stage plans (prefill and decode skip the same set); empty sets run dense."""
    return SkipPlan({s: StagePlan.static(k) for s, k in sets.items() if k}, name)


def exit_callbacks(rules: dict[str, ExitRule | None]) -> Callbacks:
    return {s: ConfidenceExit(r) for s, r in rules.items() if r is not None}


def check_policy_dict(policy: dict[str, Any], check: Checker) -> None:
    """A LiteStage policy's types: every stage's skip set (layers within num_layers), and early-exit
    rules with a whole window >= 1, a finite threshold and a known confidence."""
    layers = check.whole(policy.get("num_layers"), "num_layers", 1)
    check.string(policy.get("model"), "model")
    stages = check.keys(check.obj(policy.get("stages"), "stages"), "stages", STAGES, "stage")
    for stage in STAGES:
        entry = check.obj(stages.get(stage), f"stages.{stage}")
        check_skip_set(entry.get("skip"), f"stages.{stage}.skip", check, layers)
    rules = check.keys(check.obj(policy.get("early_exit"), "early_exit", optional=True), "early_exit", STAGES, "stage")
    for stage, rule in rules.items():
        if rule is None:
            continue
        at = f"early_exit.{stage}"
        check.obj(rule, at)
        check.whole(rule.get("window"), f"{at}.window", 1)
        check.number(rule.get("threshold"), f"{at}.threshold")
        check.one_of(rule.get("confidence", "max_prob"), f"{at}.confidence", CONFIDENCES)
    check.flag(policy.get("early_exit_off", False), "early_exit_off")


def check_policy_model(policy: dict[str, Any], model: str, num_layers: int | None = None) -> None:
    """``UserError`` when a searched policy is for another model (or, given, layer count)."""
    if policy.get("model") != model:
        raise UserError(f"policy {policy.get('path', '')} was searched for model {policy.get('model')!r}, not {model!r}",
                        f"search a policy for {model} or run with --model {policy.get('model')}")
    if num_layers is not None and policy.get("num_layers") != num_layers:
        raise UserError(f"policy {policy.get('path', '')} is for {policy.get('num_layers')} layers, "
                        f"the model has {num_layers}", "search a policy for this model")


@register("litestage")
class LiteStage(Method):
    """Applies a policy written by `litestage-bench search --method litestage`."""

    name = "litestage"
    needs_search = True

    def __init__(self, policy: dict[str, Any] | None = None) -> None:
        if policy is None:
            raise UserError("method 'litestage' needs a policy file",
                            "write one with `litestage-bench search --method litestage ... --out P.json`, "
                            "then pass --policy P.json")
        where = policy.get("path", "the policy")
        if policy.get("method") != "litestage" or policy.get("schema_version") != POLICY_SCHEMA_VERSION:
            raise UserError(f"{where} is not a LiteStage policy (method {policy.get('method')!r}, schema "
                            f"{policy.get('schema_version')!r})", "pass a file written by `litestage-bench search "
                            "--method litestage`")
        check_policy_dict(policy, Checker(where, "regenerate it with `litestage-bench search --method litestage`"))
        try:
            self.sets = {s: SkipSet.from_dict(policy["stages"][s]["skip"]) for s in STAGES}
            self.rules = {s: ExitRule.from_dict(policy.get("early_exit", {}).get(s)) for s in STAGES}
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{where} is malformed ({err!r})", "regenerate it with `litestage-bench search`") from err
        self.policy = policy
        self.early_exit = not policy.get("early_exit_off", False)

    def check_model(self, model: str) -> None:
        check_policy_model(self.policy, model)

    def plan(self, facts: ModelFacts) -> SkipPlan:
        check_policy_model(self.policy, facts.name, facts.num_layers)
        return plan_from_sets(self.sets)

    def token_callback(self, stage: str):
        rule = self.rules.get(stage)
        return ConfidenceExit(rule) if rule is not None and self.early_exit else None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "policy": self.policy.get("path"),
                "stages": {s: self.sets[s].to_dict() for s in STAGES},
                "early_exit": {s: (r.to_dict() if r and self.early_exit else None) for s, r in self.rules.items()},
                "early_exit_enabled": self.early_exit, "target": self.policy.get("target"),
                "options": self.policy.get("options")}


# ------------------------------------------------------------------------------------------------
# the search


@dataclass
class SearchOptions:
    """Every choice of the search (suite decisions where the paper is silent), recorded in the policy."""

    target: str = "accuracy"  # "accuracy": dense calibration accuracy - tolerance; "agreement": min agreement
    tolerance: float = 4.0  # points
    min_agreement: float = 0.9
    limit: int = 200  # calibration items: the power of the target tests at the default targets (target_power)
    timed: int = 10  # of them timed at batch 1 per candidate, interleaved with dense (speedup)
    rounds: int = 1  # interleaved rounds per timed item (1: the order alternates by item)
    confidence: float = 0.95  # one-sided confidence of every target decision
    batch_size: int = 8  # accuracy runs
    granularity: str = "sublayer"  # or "layer" (whole layers, ablation)
    ranking: str = "cosine"  # or "iterative" (re-measured joint harm after each added unit)
    budget: str = "stagewise"  # or "uniform" (one #skip for all stages, ablation)
    step: int = 1
    coarse_step: int = 4  # #skip sweeps: every 4th step first, then the gaps that may hold a meeting one (1: all)
    max_skip: int | None = None  # default: half of the units
    patience: int = 2  # stop a sweep after this many candidates in a row clearly miss the target (by their bounds)
    looks: int = 4  # the calibration items in this many chunks: a candidate stops at the first one where it
    # clearly misses (futility) or already meets at the interim confidence (efficacy)
    efficacy_share: float = 0.2  # of alpha = 1 - confidence, spent evenly on the interim looks' efficacy stops
    futility_confidence: float = 0.7  # an interim look's upper bound: below the bar stops the candidate
    # (a curtailment: it costs power, recorded in `power`, never the confidence of a "meets")
    throughput: tuple[int, int, int] | None = None  # (B, chunks, rounds): every timed candidate also at batch B
    latency_fit: str | None = "auto"  # rank by predicted speedup, time the finalists: a fit file, "auto"
    # (results/latency/ by model, numerics, device and CPU, if there) or None (time every candidate)
    early_exit: bool = True
    exit_window: int = 4
    exit_confidence: str = "max_prob"
    exit_quantiles: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    harm_items: int = 8  # calibration questions whose stage prompts measure KL harm
    importance_items: int | None = None  # the first N calibration items' prefills give the importance (None: all)
    choose_rule: bool = False  # the answer rule: the most accurate on the dense pass's answers (`--answer-rule auto`)
    harm_profile: bool = False  # every unit skipped alone, with its rank correlation to the cosine ranking
    iterative_pool: int | None = 16  # candidates per iterative round (None: all)
    seed: int = 0

    def check(self) -> None:
        checks = [(self.target in ("accuracy", "agreement"), "target must be 'accuracy' or 'agreement'"),
                  (self.granularity in ("sublayer", "layer"), "granularity must be 'sublayer' or 'layer'"),
                  (self.ranking in ("cosine", "iterative"), "ranking must be 'cosine' or 'iterative'"),
                  (self.budget in ("stagewise", "uniform"), "budget must be 'stagewise' or 'uniform'"),
                  (0 <= self.min_agreement <= 1, "min agreement must be within 0..1"),
                  (self.tolerance >= 0, "tolerance must be >= 0 points"),
                  (min(self.step, self.coarse_step, self.patience, self.limit, self.rounds, self.looks) >= 1,
                   "step, coarse step, patience, limit, rounds and looks must be >= 1"),
                  (0 <= self.efficacy_share < 1, "efficacy share must be within 0..1 (1 excluded)"),
                  (0.5 <= self.futility_confidence <= self.confidence,
                   "futility confidence must be within 0.5..confidence"),
                  (0.5 < self.confidence < 1, "confidence must be within 0.5..1"),
                  (1 <= self.timed <= self.limit, "timed must be within 1..limit"),
                  (self.importance_items is None or self.importance_items >= 1, "importance items must be >= 1"),
                  (self.throughput is None or (self.throughput[0] >= 2 and min(self.throughput[1:]) >= 1 and
                                               self.throughput[0] * self.throughput[1] <= look_ends(
                                                   self.limit, self.looks, self.batch_size)[0]),
                   "--timing batch=B needs B >= 2 and B x chunks within the first look's items")]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"bad search option: {msg}", "see `litestage-bench search --help`")


def config_sha(obj: Any) -> str:
    """A short stable hash of a JSON-able configuration (the draft search's cache file names)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


class CandidateMeter:
    """Accuracy / agreement on the calibration items (batched) and the speedup over dense on a
    timed subset (batch 1, dense and the candidate interleaved), per candidate plan.

    The answers come one look's chunk of items at a time (search_decisions.py): after each chunk
    but the last, a candidate whose test already clearly misses on the items so far stops there
    (futility), and one whose lower bound already passes at the interim (alpha-spending) confidence
    stops as meeting (efficacy). A candidate that clearly misses is not timed: it can no longer be
    chosen. Each row records where it stopped and why (`stopped`) and the confidences its test used.

    Without a latency fit (`speed` None) every other candidate is timed as it is measured. With one,
    a candidate gets a `predicted_speedup` from its own answers (tokens, executed costs) and is timed
    only as a finalist of its sweep (`choose`): its `speedup` stays None otherwise.

    Each chunk's answers and each timing is a row of the search's row store (search_rows.py), keyed
    by the plan and the search's settings: answers leave out the CPU where the numerics are exact,
    timings hold the CPU, threads and code version. So a search interrupted on one machine, even
    inside a candidate, resumes on another CPU with its answers and re-times only, and a search for
    another target reads the chunks it needs. Decisions are not stored: each row's target test is
    computed on reading, once `target` is set.
    """

    def __init__(self, reasoner: Reasoner, items: list[Question], timed_items: list[Question],
                 dense: list[ItemResult], keys: tuple[dict, dict], store: RowStore, opts: "SearchOptions",
                 log: Callable[[str], None], memo: StageMemo, speed: SpeedPredictor | None = None) -> None:
        self.reasoner, self.items, self.timed_items, self.dense = reasoner, items, timed_items, dense
        self.answers_key, self.timing_key = keys
        self.store, self.opts, self.log, self.memo, self.speed = store, opts, log, memo, speed
        self.looks = look_plan(len(items), opts)
        self.target: dict | None = None  # set once dense's calibration accuracy is known
        self.measured = 0  # candidates with anything measured
        self.from_disk = 0  # candidates read whole from disk
        self.retimed = 0  # candidates whose answers came from disk and whose timing was measured
        self.timed = 0  # candidates timed (measured or read)
        self._answers_read: dict[int, bool] = {}  # id(row) of an untimed row -> whether it was read whole
        self._pretimed: dict[int, dict] = {}  # id(row) -> its timing, measured in its sweep's finalist group
        # per sweep, the highest speedup predicted on the first chunk's items among its qualifying rows
        # (the accepted setting, measured first, and every meeting one): the bar of the speed stop
        self._qualifying: dict[str, float] = {}
        self._predictions: dict[int, dict[str, str | None]] = {}  # id(row) -> its answers by item id
        self._measuring = ""  # the candidate whose chunk is being measured

    def measure(self, sets: dict[str, SkipSet], rules: dict[str, ExitRule | None], label: str,
                meta: dict | None = None, timed: bool = False) -> dict:
        """One candidate's row; timed now unless it clearly misses, or, with a latency fit, unless
        `timed` (then `choose` times the finalists)."""
        config = {"sets": {s: sets.get(s, SkipSet()).to_dict() for s in STAGES},
                  "exits": {s: (rules[s].to_dict() if rules.get(s) else None) for s in STAGES}}
        sweep_name = (meta or {}).get("sweep", label)
        answers, answers_stored, rows, parts, t, stopped = self._answers(sets, rules, config, label, sweep_name)
        self._note_qualifying(sweep_name, sets, rules, parts, t)
        predicted = None
        if self.speed is not None and t["decision"] not in ("clearly misses", "slower"):
            predicted = self.speed.predict(sets, rules, [p.get("items") for p in parts], self.dense,
                                           self.reasoner.cfg.reuse_kv)
        row = {**config, **answers, "speedup": None, "predicted_speedup": predicted, "label": label, **(meta or {}),
               "test": t, "stopped": stopped, "rows": rows}
        if self.opts.throughput:  # the answers its batch-B chunks must reproduce
            self._predictions[id(row)] = {i: a for p in parts if p.get("items")
                                          for i, a in zip(p["items"]["ids"], p["items"]["prediction"])}
        if t["decision"] in ("clearly misses", "slower"):
            row["timing"] = ("none: it clearly misses the target" if t["decision"] == "clearly misses" else
                             "none: predicted clearly slower than a qualifying candidate of its sweep")
        elif self.speed is None or timed:
            self._time(row, answers_stored, counted=False)
        else:
            row["timing"] = "none unless a finalist of its sweep by predicted speedup"
            self._answers_read[id(row)] = answers_stored
        if "timing" in row:  # not timed (now): counted here
            self.from_disk += answers_stored
            self.measured += not answers_stored
        n, planned = answers["flips"]["n"], len(self.items)
        bounds = f" {t['statistic']} {t['estimate']:+.3f} [{t['lower']:+.3f}, {t['upper']:+.3f}]" if self.target else ""
        stop = f" after {n} of {planned} items ({stopped['why']})" if n < planned else ""
        speed = "not timed" if row["speedup"] is None else f"speedup {row['speedup']:.2f}x"
        guess = "" if predicted is None else f" (predicted {predicted:.2f}x)"
        self.log(f"[search] {label}: acc {row['accuracy']:.3f} agreement {row['agreement']:.3f}{bounds} "
                 f"-> {t['decision']}{stop}; {speed}{guess} tokens {row['tokens']}")
        return row

    def choose(self, rows: list[dict]) -> dict:
        """The kept row of a sweep: the fastest meeting one by measured speedup; with a latency fit,
        among the finalists by predicted speedup (search_sweep.finalists), timed now."""
        if self.speed is None:
            return fastest_meeting(rows)
        picked = finalists(rows, self.speed.half_width)
        self._time_together([row for row in picked if row["speedup"] is None])
        for row in picked:
            if row["speedup"] is None:
                self._time(row, self._answers_read.pop(id(row), False), counted=True)
                self.log(f"[search] {row['label']}: finalist, speedup {row['speedup']:.2f}x "
                         f"(predicted {row['predicted_speedup'] or float('nan'):.2f}x)")
        return max(picked, key=lambda r: r["speedup"])

    def _time(self, row: dict, answers_stored: bool, counted: bool) -> None:
        """Time a row's candidate (or read its timing row) into the row. `counted`: the row was
        already counted as read (answers_stored) or measured."""
        config, plan, callbacks = _row_pipeline(row)
        self._measuring = row["label"]
        timing, stored, name = self.store.stored("timing", {**self.timing_key, **config},
                                                 lambda: self._pretimed.pop(id(row), None) or self._timing(plan, callbacks),
                                                 {"label": row["label"]})
        row.pop("timing", None)
        row.update(timing)
        row["rows"].append(name)
        if self.opts.throughput and (plan.stages or callbacks):
            self._time_throughput(row, plan, callbacks, config)
        self.timed += 1
        if counted and answers_stored and not stored:  # read whole so far: now re-timed
            self.from_disk, self.measured, self.retimed = self.from_disk - 1, self.measured + 1, self.retimed + 1
        elif not counted:
            self.from_disk += answers_stored and stored
            self.measured += not (answers_stored and stored)
            self.retimed += answers_stored and not stored

    def _first_chunk_speedup(self, sets: dict[str, SkipSet], rules: dict[str, ExitRule | None],
                             parts: list[dict]) -> float | None:
        """The speedup predicted from the first chunk's items alone (the same items for every candidate)."""
        return self.speed.predict(sets, rules, [parts[0].get("items")], self.dense, self.reasoner.cfg.reuse_kv)

    def _note_qualifying(self, sweep: str, sets: dict[str, SkipSet], rules: dict[str, ExitRule | None],
                         parts: list[dict], t: dict) -> None:
        """Raise the sweep's speed bar with a qualifying row: the first one measured in the sweep (its
        accepted setting) or one that meets."""
        if self.speed is None or not parts or (sweep in self._qualifying and t["decision"] != "meets"):
            return
        p = self._first_chunk_speedup(sets, rules, parts)
        if p is not None:
            self._qualifying[sweep] = max(p, self._qualifying.get(sweep, p))

    def _slower(self, sweep: str, sets: dict[str, SkipSet], rules: dict[str, ExitRule | None], parts: list[dict]) -> bool:
        """The speed stop: the candidate's first-chunk prediction, at its most optimistic (p / (1 - e)),
        stays below the sweep's bar at its least (bar / (1 + e)); such a candidate is no finalist
        (search_sweep.finalists) unless its later items change its tokens. e: the fit's error."""
        if self.speed is None or sweep not in self._qualifying:
            return False
        p, e = self._first_chunk_speedup(sets, rules, parts), self.speed.half_width
        return p is not None and p / (1 - e) < self._qualifying[sweep] / (1 + e)

    def _time_throughput(self, row: dict, plan: SkipPlan, callbacks: Callbacks, config: dict) -> None:
        """The candidate's throughput over dense at batch B (runner.throughput_timing) on seeded chunks of
        the calibration items its answers cover, which the chunks must reproduce; a `throughput` row."""
        from ..evaluation.runner import throughput_timing
        from types import SimpleNamespace

        answers = self._predictions.get(id(row), {})
        items = [q for q in self.items if q.id in answers]
        results = [SimpleNamespace(id=q.id, prediction=answers[q.id]) for q in items]
        pipelines = {"method": (plan, callbacks), "dense": (SkipPlan(), {})}
        settings = tuple(self.opts.throughput)
        value, _, name = self.store.stored(
            "throughput", {**self.timing_key, **config, "throughput": list(settings),
                                 "throughput_items": ids_sha([q.id for q in items])},
            lambda: {**throughput_timing(self.reasoner, pipelines, items, results, settings, self.opts.seed,
                                         f"search {row['label']}"), "cpu": machine_info().get("cpu")},
            {"label": row["label"]})
        row.update(throughput_speedup=value["throughput_speedup"],
                   throughput_speedup_ci95=value["throughput_speedup_ci95"], throughput_batch=value["batch_size"],
                   throughput_decomposition=(value.get("decomposition") or {}).get("total"))
        row["rows"].append(name)

    def _answers(self, sets: dict[str, SkipSet], rules: dict[str, ExitRule | None], config: dict,
                 label: str, sweep: str) -> tuple[dict, bool, list[str], list[dict], dict, dict]:
        """The candidate's answers over the chunks it needs (see the class), whether every chunk
        came from the row store, the rows' file names, the chunks, its test and where it stopped."""
        plan, callbacks = plan_from_sets(sets), exit_callbacks(rules)
        rows, read = [], []

        def chunk(lo: int, hi: int) -> dict:
            self._measuring = label  # its progress lines' name
            part, stored, name = self.store.stored("answers", {**self.answers_key, **config, "chunk": [lo, hi]},
                                                   lambda: self._answer_counts(plan, callbacks, lo, hi),
                                                   {"label": label})
            rows.append(name)
            read.append(stored)
            return part
        answers, parts, t, stopped = run_looks(self.target, self.looks, chunk,
                                               lambda parts: self._slower(sweep, sets, rules, parts))
        return answers, all(read), rows, parts, t, stopped

    def _answer_counts(self, plan: SkipPlan, callbacks: Callbacks, lo: int, hi: int) -> dict:
        """Calibration items lo..hi: counts and sums that add up over chunks (merge_answer_counts)."""
        start, cpu, items = time.perf_counter(), time.process_time(), self.items[lo:hi]
        misses, derived = self.memo.misses, self.memo.derived
        ids = {q.id for q in items}
        dense = [d for d in self.dense if d.id in ids]
        if not plan.stages and not callbacks:
            # dense itself (the reference): the dense pass's items on these ids, which a dense run
            # reproduces exactly (the canary); a search resumed from the dense row has no stage memo,
            # and would otherwise run a whole dense pass again (40 core-minutes on the 1.5B)
            results = dense
        else:
            # a chunk of the 1.5B runs for half an hour: a line per batch once a minute has passed since the last
            results = evaluate_items(self.reasoner, plan, callbacks, items, self.opts.batch_size,
                                     f"search {self._measuring} items {lo + 1}-{hi}", memo=self.memo,
                                     quiet_for=CHUNK_QUIET_SECONDS)
        fid = aggregate_fidelity(dense, results, self.reasoner.cfg.answer_rule)
        return {"n": len(results), "correct": sum(bool(r.correct) for r in results),
                **{k: fid[k] for k in ("correct_to_wrong", "wrong_to_correct", "changed", "answer_kl_n")},
                "answer_kl_sum": (fid["answer_kl"] or 0.0) * fid["answer_kl_n"],
                "token_sums": {s: sum(r.tokens[s] for r in results) for s in STAGES},
                "cost_fraction_sums": {s: sum(r.executed_cost_fraction[s] for r in results) for s in STAGES},
                "stage_runs": self.memo.misses - misses, "stage_runs_derived": self.memo.derived - derived,
                "cpu": str(machine_info().get("cpu")),
                "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                "items": item_columns(results)}

    def _timing(self, plan: SkipPlan, callbacks: Callbacks) -> dict:
        """Batch-1 timing without the memo: every stage is re-run, dense beside the candidate."""
        start, cpu = time.perf_counter(), time.process_time()
        pipelines = {"candidate": (plan, callbacks)}
        if plan.stages or callbacks:
            pipelines["dense"] = (SkipPlan(), {})
        timed = self._time_items(pipelines, self._measuring)
        return _timing_value(timed.get("dense"), timed["candidate"], time.perf_counter() - start,
                             time.process_time() - cpu)

    def _time_items(self, pipelines: dict[str, tuple[SkipPlan, Callbacks]], label: str) -> dict[str, list[ItemResult]]:
        # a 1.5B finalist is timed for 20 min: a line per question once a minute has passed since the last
        return time_items(self.reasoner, pipelines, self.timed_items, f"search {label}", warmup=0,
                          rounds=self.opts.rounds, progress_every=1, quiet_for=CHUNK_QUIET_SECONDS)

    def _time_together(self, rows: list[dict]) -> None:
        """A sweep's finalists that are not dense and have no timing row yet, timed as one group: per
        timed question, dense and each of them back to back, the order alternating (k + 1 solves,
        not the 2k of timing them one by one), each one's speedup paired with the dense solves of its
        own rounds, as `retime-latency` times a group of records. Each keeps its own timing row (the
        group's seconds shared evenly) naming the others (`timed_with`)."""
        todo = []
        for row in rows:
            config, plan, callbacks = _row_pipeline(row)
            if (plan.stages or callbacks) and not self.store.path("timing", {**self.timing_key, **config}).is_file():
                todo.append((row, (plan, callbacks)))
        if len(todo) < 2:
            return
        start, cpu = time.perf_counter(), time.process_time()
        labels = [row["label"] for row, _ in todo]
        timed = self._time_items({"dense": (SkipPlan(), {}), **{str(i): p for i, (_, p) in enumerate(todo)}},
                                 f"{labels[0]} and {len(todo) - 1} more finalists")
        share = 1 / len(todo)
        for i, (row, _) in enumerate(todo):
            value = _timing_value(timed["dense"], timed[str(i)], (time.perf_counter() - start) * share,
                                  (time.process_time() - cpu) * share)
            self._pretimed[id(row)] = {**value, "timed_with": [label for label in labels if label != row["label"]]}


def cache_keys(base_key: dict, exact: bool, opts: "SearchOptions") -> tuple[dict, dict]:
    """The row keys (search_rows.py): answers without the code version (the canary stands for it),
    and without the CPU and threads where the numerics are exact, with them and the batch size where
    they are not; timing with the CPU, threads and rounds, and the version of the code that runs while a
    solve is timed (timing_code_version: an edit to the search's own logic keeps the timings)."""
    answers = {k: v for k, v in base_key.items() if k not in ("cpu", "threads", "code")}
    if not exact:  # bf16 or a GPU: answers may change with the CPU, the threads and the batching
        answers = {**answers, "cpu": base_key["cpu"], "threads": base_key["threads"], "batch_size": opts.batch_size}
    timing = {k: v for k, v in base_key.items() if k != "code"}
    return answers, {**timing, "timing_code": timing_code_version(), "rounds": opts.rounds}


@dataclass
class SearchState:
    """What the sweeps have fixed so far."""

    sets: dict[str, SkipSet] = field(default_factory=lambda: {s: SkipSet() for s in STAGES})
    n_skip: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STAGES})
    rules: dict[str, ExitRule | None] = field(default_factory=lambda: {s: None for s in STAGES})


def _budget_sweeps(meter: CandidateMeter, ranking: list, order: list[str], opts: SearchOptions,
                   state: SearchState) -> list[dict]:
    """Step 2: per stage (slowest first) or uniform, the fastest #skip that meets the target
    (coarse to fine: search_sweep.coarse_to_fine)."""
    max_skip = opts.max_skip if opts.max_skip is not None else len(ranking) // 2
    values = list(range(0, min(max_skip, len(ranking)) + 1, opts.step))
    rows: list[dict] = []
    if opts.budget == "uniform":
        def uniform(n: int) -> dict:
            return meter.measure({s: skip_set(ranking, n) for s in STAGES}, state.rules, f"uniform #skip={n}",
                                 {"sweep": "uniform", "n_skip": n})
        best, measured = coarse_to_fine(uniform, values, opts.patience, opts.coarse_step, meter.choose)
        rows += measured
        state.sets = {s: skip_set(ranking, best["n_skip"]) for s in STAGES}
        state.n_skip = {s: best["n_skip"] for s in STAGES}
        return rows
    for stage in order:
        def stage_candidate(n: int, stage: str = stage) -> dict:
            sets = {**state.sets, stage: skip_set(ranking, n)}
            return meter.measure(sets, state.rules, f"{stage} #skip={n}", {"sweep": stage, "n_skip": n})
        best, measured = coarse_to_fine(stage_candidate, values, opts.patience, opts.coarse_step, meter.choose)
        rows += measured
        state.sets[stage] = skip_set(ranking, best["n_skip"])
        state.n_skip[stage] = best["n_skip"]
    return rows


def _exit_sweeps(meter: CandidateMeter, thresholds: dict[str, list[float]], order: list[str], opts: SearchOptions,
                 state: SearchState) -> list[dict]:
    """Step 3: per stage (slowest first), the fastest early-exit threshold (or none) meeting the target;
    thresholds from the highest down, the sweep ending at the first that meets (search_sweep.threshold_sweep)."""
    rows: list[dict] = []
    for stage in order:
        def exit_candidate(threshold: float | None, stage: str = stage) -> dict:
            rule = None if threshold is None else ExitRule(opts.exit_window, threshold, opts.exit_confidence)
            label = f"{stage} exit " + ("off" if rule is None else f"<= {threshold:.4g}")
            return meter.measure(state.sets, {**state.rules, stage: rule}, label,
                                 {"sweep": f"{stage} early exit", "threshold": threshold})
        with meter.memo.deriving(stage):  # its threshold runs cut from one exit-off run (exact numerics)
            best, measured = threshold_sweep(exit_candidate, [None, *sorted(thresholds[stage], reverse=True)],
                                             opts.patience, meter.choose)
        rows += measured
        threshold = best["threshold"]
        state.rules[stage] = None if threshold is None else ExitRule(opts.exit_window, threshold, opts.exit_confidence)
    return rows


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _harm_report(harm: HarmMeter, sets: dict[str, SkipSet], ranking: list, scores: dict[str, list[float]],
                 opts: SearchOptions, log) -> dict:
    """Joint KL of each chosen stage set beside the sum of its members' single harms; optionally
    the whole single-skip profile and its rank correlation with the cosine ranking."""
    units = [u for u in ranking if u[0] != "layer"] if opts.granularity == "sublayer" else list(ranking)
    singles: dict[tuple, float] = {}
    if opts.harm_profile:
        log(f"[search] harm profile: {len(units)} single skips")
        singles = harm.single_harms(units, log)
    out: dict[str, Any] = {"tokens": harm.tokens, "items": opts.harm_items, "stage_sets": {}}
    for stage, chosen in sets.items():
        members = [u for u in units if skip_set([u]).attn <= chosen.attn and skip_set([u]).ffn <= chosen.ffn]
        for u in members:
            if u not in singles:
                singles[u] = harm.kl(skip_set([u]))
        out["stage_sets"][stage] = {"joint_kl": harm.kl(chosen), "sum_single_kl": sum(singles[u] for u in members),
                                    "units": len(members)}
    if opts.harm_profile:
        out.update(ranking_vs_harm(units, singles, scores))
    return out


def calibration_items(bench: str, limit: int, timed: int, seed: int, data_dir=None) -> tuple[list[Question], list[Question]]:
    """A search's calibration items (checked, disjoint from evaluation) and its seeded timed subset;
    seeds everything first."""
    seed_everything(seed)
    items = check_items(load_split(bench, "calib", limit=limit, data_dir=data_dir, seed=seed), bench, "calib", data_dir)
    check_disjoint(items, load_split(bench, "eval", data_dir=data_dir))
    return items, subset(items, timed, seed)


def _canary_size(opts: SearchOptions) -> int:
    """The canary's items: whole batches covering the harm items."""
    return -(-max(opts.batch_size, opts.harm_items) // opts.batch_size) * opts.batch_size


def _canary(reasoner: Reasoner, items: list[Question], opts: SearchOptions, recorders: dict,
            memo: StageMemo) -> tuple[str, str, dict]:
    """Dense on the first calibration batches (covering the harm items), traced; run by every search
    before it reads any row. Its hashes go into the row keys (search_rows.py: the answers' with the
    rule's answers, the dense row's with every rule's), its stage runs into the memo (the dense pass
    takes them from there) and its trace gives the harm prompts."""
    with reasoner.tracing() as trace:
        results = evaluate_items(reasoner, SkipPlan(), recorders, items[:_canary_size(opts)], opts.batch_size,
                                 progress=False, memo=memo)
    return canary(results), generations_canary(results), trace


def _dense_pass(session, reasoner: Reasoner, items: list[Question], opts: SearchOptions, label: str,
                store: RowStore, key: dict, canary_trace: dict, recorders: dict, memo: StageMemo,
                log: Callable[[str], None]) -> tuple[list[ItemResult], StageTexts, dict, dict]:
    """Dense on the calibration items, batched: its answers, the confidence means (exit thresholds)
    and the importance vectors. Measured batch by batch, each batch's answers, confidences and
    importance sums written as a `dense-batch` row when it finishes, so that a pass longer than a
    working period (1.7 core-hours on the 1.5B) continues on the next machine; the whole pass then
    becomes the importance and dense rows (importance first: a dense row never stands without it)
    and the batch rows go. The dense row is the same for every answer rule (its key leaves the rule
    out): its items are answered by this search's rule. The stage texts returned are the canary's
    (enough for the harm prompts)."""
    header = reasoner.header.ids if reasoner.header else []
    texts = StageTexts(header, canary_trace)

    def answered(value: dict) -> list[ItemResult]:  # the dense row's items, answered by this search's rule
        return dense_row_items(value, store.path("dense", key), reasoner.cfg.answer_rule)

    importance_key = {} if opts.importance_items is None else {"importance_items": opts.importance_items}
    if store.path("dense", key).is_file() and store.path("importance", {**key, **importance_key}).is_file():
        value = store.stored("dense", key, dict)[0]
        importance = store.stored("importance", {**key, **importance_key}, dict)[0]
        log(f"[search] {label}: dense on {len(items)} calibration items from {store.path('dense', key)}")
        return answered(value), texts, value["means"], importance
    # the importance of the first N items' prefills (a prefill costs the 1.5B about as much per item as
    # its whole dense answer); its key names N only when it is not every item, as before
    n_importance = len(items) if opts.importance_items is None else opts.importance_items
    canary_ids = {q.id for q in items[:_canary_size(opts)]}
    canary_means = {s: list(recorders[s].means) for s in STAGES}  # recorded by the canary's batches
    header_cache = HeaderCache(session.executor, header)
    log(f"[search] {label}: dense on {len(items)} calibration items and the importance of their prefills, "
        f"batch by batch (rows dense-batch-*)")
    parts, batch_keys, start = [], [], time.perf_counter()
    for b in range(0, len(items), opts.batch_size):
        batch = items[b:b + opts.batch_size]
        ids = [q.id for q in batch]

        def measure(batch: list[Question] = batch, ids: list[str] = ids, index: int = b) -> dict:
            began, cpu = time.perf_counter(), time.process_time()
            before = {s: len(recorders[s].means) for s in STAGES}
            with reasoner.tracing() as trace:
                results = evaluate_items(reasoner, SkipPlan(), recorders, batch, opts.batch_size, progress=False,
                                         memo=memo)
            in_canary = set(ids) <= canary_ids  # its stage runs came from the canary's memo: so did its trace
            source = canary_trace if in_canary else trace
            batch_texts = StageTexts(header, {s: [e for e in source.get(s, []) if e[0] in set(ids)] for s in STAGES})
            means = ({s: (canary_means[s] if index == 0 else []) for s in STAGES} if in_canary
                     else {s: recorders[s].means[before[s]:] for s in STAGES})
            probe = (probe_sums(session.executor, header_cache, batch_texts, opts.batch_size)
                     if index < n_importance else None)
            return {"ids": ids, "items": [item_to_dict(r) for r in results], "means": means, "probe": probe,
                    "cost": {"cpu": str(machine_info().get("cpu")), "seconds": time.perf_counter() - began,
                             "cpu_seconds": time.process_time() - cpu}}
        batch_key = {**key, "batch": ids_sha(ids), **importance_key}
        value, read, _ = store.stored("dense-batch", batch_key, measure)
        parts.append(value)
        batch_keys.append(batch_key)
        done = b + len(batch)
        log(f"[search] {label} dense: {done}/{len(items)} items ({'read back' if read else 'measured'}), "
            f"{(time.perf_counter() - start) / 60:.1f} min")
    means = {s: [m for p in parts for m in p["means"][s]] for s in STAGES}
    importance = store.stored("importance", {**key, **importance_key},
                              lambda: merged_importance([p["probe"] for p in parts if p["probe"]]))[0]
    value = store.stored("dense", key, lambda: {"ids": [q.id for q in items],
                                                "items": [it for p in parts for it in p["items"]], "means": means,
                                                "cost": dense_pass_cost(parts)})[0]
    for batch_key in batch_keys:  # the dense row holds them now
        store.remove("dense-batch", batch_key)
    return answered(value), texts, means, importance


def _row_pipeline(row: dict) -> tuple[dict, SkipPlan, Callbacks]:
    """A candidate row's plan config (its rows' key part), skip plan and exit callbacks."""
    return ({"sets": row["sets"], "exits": row["exits"]},
            plan_from_sets({s: SkipSet.from_dict(row["sets"][s]) for s in STAGES}),
            exit_callbacks({s: ExitRule.from_dict(row["exits"][s]) for s in STAGES}))


def _timing_value(dense: list[ItemResult] | None, cand: list[ItemResult], seconds: float, cpu_seconds: float) -> dict:
    """A timing row's value: the candidate's interleaved speedup over dense's solves (dense None: the
    candidate is dense itself, speedup 1)."""
    paired = (paired_speedup(dense, cand) if dense is not None
              else {"speedup": 1.0, "ci95": (1.0, 1.0), "speedup_rounds": []})
    return {"speedup": paired["speedup"], "speedup_ci95": paired["ci95"], "speedup_rounds": paired["speedup_rounds"],
            "latency_s": statistics.fmean(r.latency_s for r in cand),
            "stage_latency_s": {s: statistics.fmean(r.stage_latency_s[s] for r in cand) for s in STAGES},
            "timing_cpu": machine_info().get("cpu"), "timing_seconds": seconds, "timing_cpu_seconds": cpu_seconds}


def dense_pass_cost(parts: list[dict]) -> dict:
    """What the dense pass's batches cost, per CPU they ran on (batch rows written before their cost
    was kept are counted in `batches_without_cost`): the search's dense share, which its policy's
    candidates do not hold."""
    per_cpu: dict[str, dict] = {}
    for part in parts:
        cost = part.get("cost")
        if cost:
            entry = per_cpu.setdefault(cost["cpu"], {"batches": 0, "items": 0, "seconds": 0.0, "cpu_seconds": 0.0})
            entry["batches"] += 1
            entry["items"] += len(part["ids"])
            entry["seconds"] += cost["seconds"]
            entry["cpu_seconds"] += cost["cpu_seconds"]
    return {"per_cpu": per_cpu, "batches_without_cost": sum(1 for p in parts if not p.get("cost"))}


def search(session, bench: str, opts: SearchOptions, config, *, data_dir=None, command: str = "",
           store_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> dict:
    """The whole offline LiteStage search on the calibration split; returns the policy. Every
    measured piece is a row under `store_dir` (default results/search/MODEL_BENCH, search_rows.py)."""
    from ..engine.models import model_label

    opts.check()
    started = time.perf_counter()
    items, timed_items = calibration_items(bench, opts.limit, opts.timed, opts.seed, data_dir)
    reasoner = session.reasoner(bench, config, data_dir)
    facts = model_facts(session.executor, session.loaded.name)
    name = session.loaded.name
    store = RowStore(store_dir if store_dir is not None else default_store(model_label(name), bench))
    recorders = {s: ConfidenceRecorder(opts.exit_window, opts.exit_confidence) for s in STAGES}
    memo = StageMemo()
    fit_group = {"model": name, "numerics": str(session.loaded.numerics or session.loaded.dtype),
                 "device": str(session.executor.device), "cpu": str(machine_info().get("cpu"))}
    speed = find_predictor(opts.latency_fit, fit_group, bench, log)  # before anything runs: a bad fit fails now
    log(f"[search] {name} {bench}: rows in {store.root}; dense on the first calibration batches (canary)")
    canary_sha, generations_sha, canary_trace = _canary(reasoner, items, opts, recorders, memo)

    base_key = {"code": code_version(), "canary": canary_sha, "model": name,
                "source": model_source(session.loaded.source),
                "dtype": session.loaded.dtype, "numerics": session.loaded.numerics, "bench": bench,
                "items": ids_sha([q.id for q in items]), "timed": ids_sha([q.id for q in timed_items]),
                "config": config.to_dict(), "cpu": machine_info().get("cpu"), "threads": _threads(),
                "device": str(session.executor.device)}
    exact = exact_numerics(session.loaded.numerics or session.loaded.dtype, str(session.executor.device))
    keys = cache_keys(base_key, exact, opts)
    if exact:  # exit-rule runs derived from an exit-off run's trace equal the real ones (StageMemo)
        memo.exit_trace = (opts.exit_window, opts.exit_confidence)
    rule_free = {k: v for k, v in keys[0]["config"].items() if k != "answer_rule"}
    dense_key = {**keys[0], "canary": generations_sha, "config": rule_free, "batch_size": opts.batch_size,
                 "exit_window": opts.exit_window, "exit_confidence": opts.exit_confidence}
    dense, texts, means, per_stage = _dense_pass(session, reasoner, items, opts, f"{name} {bench}", store, dense_key,
                                                 canary_trace, recorders, memo, log)
    if not texts.header:
        raise UserError("the search needs the shared-header cache", "do not disable header_cache for a search")
    rule_choice = None
    if opts.choose_rule:  # before any candidate: their rows are keyed on the rule (the dense row is not)
        rule_choice, dense = choose_answer_rule(reasoner.cfg, dense, log)
        config = reasoner.cfg
        # the canary hashes the rule's answers: as a search run with the chosen rule named computes it
        base_key = {**base_key, "config": config.to_dict(), "canary": canary(dense[:_canary_size(opts)])}
        keys = cache_keys(base_key, exact, opts)
    meter = CandidateMeter(reasoner, items, timed_items, dense, keys, store, opts, log, memo, speed)
    for q in items[:1]:  # warm-up (allocator, header cache), not timed
        reasoner.solve(q, SkipPlan())
    dense_row = meter.measure({}, {}, "dense", {"sweep": "dense", "n_skip": 0}, timed=True)
    order = sorted(STAGES, key=lambda s: -dense_row["stage_latency_s"][s])

    dense_acc = dense_row["accuracy"]
    if opts.target == "accuracy":
        target = {"kind": "accuracy", "tolerance_points": opts.tolerance, "dense_accuracy": dense_acc,
                  "min_accuracy": dense_acc - opts.tolerance / 100}
    else:
        target = {"kind": "agreement", "min_agreement": opts.min_agreement}
    meter.target = target

    scores = accumulate(per_stage)
    ranking = cosine_ranking(scores, opts.granularity)
    harm_ids = {q.id for q in items[:opts.harm_items]}
    harm_prompts = [p for s in STAGES for p in texts.prompts(s, per_question=True, ids=harm_ids)]
    harm = HarmMeter(session.executor, texts.header, harm_prompts)
    if opts.ranking == "iterative":
        length = opts.max_skip if opts.max_skip is not None else len(ranking) // 2
        ranking = iterative_ranking(harm, ranking, length, opts.iterative_pool, log)

    state = SearchState()
    rows = [dense_row] + _budget_sweeps(meter, ranking, order, opts, state)
    thresholds = {s: [] for s in STAGES}
    if opts.early_exit:
        thresholds = {s: sorted({_quantile(means[s], q) for q in opts.exit_quantiles}, reverse=True)
                      if means[s] else [] for s in STAGES}
        rows += _exit_sweeps(meter, thresholds, order, opts, state)
    final = meter.measure(state.sets, state.rules, "chosen", {"sweep": "chosen"}, timed=True)
    harm_report = _harm_report(harm, state.sets, ranking, scores, opts, log)

    return {
        "schema_version": POLICY_SCHEMA_VERSION, "method": "litestage", "model": name,
        "num_layers": facts.num_layers, "dtype": session.loaded.dtype, "numerics": session.loaded.numerics,
        "bench": bench,
        "options": asdict(opts), "reasoner_config": config.to_dict(), "target": target,
        "calibration": {"split": "calib", "n": len(items), "ids": [q.id for q in items],
                        "timed_ids": [q.id for q in timed_items], "dense_accuracy": dense_acc,
                        "dense_accuracy_ci95": dense_row["accuracy_ci95"],
                        "dense_stage_latency_s": dense_row["stage_latency_s"], "stage_order": order},
        "importance": per_stage, "accumulated": scores, "ranking": [list(u) for u in ranking],
        "stages": {s: {"n_skip": state.n_skip[s], "skip": state.sets[s].to_dict()} for s in STAGES},
        "early_exit": {s: (state.rules[s].to_dict() if state.rules[s] else None) for s in STAGES},
        "exit_thresholds_swept": thresholds, "answer_rule_choice": rule_choice,
        "chosen": {**final, "speedup_vs_dense": final["speedup"]},
        "power": target_power(opts, len(items)), "looks": meter.looks.to_dict(),
        "speed_ranking": speed.describe() if speed else {"fit": None, "timed": "every candidate that does not "
                                                                                 "clearly miss"},
        "candidates": rows, "harm": harm_report,
        "search_cost": {"wall_seconds": time.perf_counter() - started, "stage_runs": meter.memo.misses,
                        "stage_runs_reused": meter.memo.hits, "stage_runs_derived": meter.memo.derived,
                        "candidates_measured": meter.measured,
                        "candidates_from_disk": meter.from_disk, "candidates_retimed": meter.retimed,
                        "candidates_timed": meter.timed,
                        "answers_cache": "without the CPU (exact numerics)" if exact else "per CPU",
                        "harm_passes": harm.passes,
                        "rows": {"dir": store.root.as_posix(), "read": len(store.read),
                                 "written": len(store.written)}},
        "machine": machine_info(), "code_version": base_key["code"], "command": command,
    }


def choose_answer_rule(config, dense: list[ItemResult], log: Callable[[str], None]) -> tuple[dict, list[ItemResult]]:
    """`--answer-rule auto`: the rule most accurate on the dense pass's answers of the calibration
    items (every rule's prediction is kept per item; a tie keeps the model's default, as
    studies.answer_rule chooses), set on `config` (the reasoner's, so every candidate answers by it);
    the choice with each rule's accuracy, and dense's items answered by it."""
    default = config.answer_rule
    chosen = most_accurate_rule(dense, default)
    accuracy = {rule: sum(hits) / len(hits) for rule, hits in rule_hits(dense).items()}
    config.answer_rule = chosen
    log(f"[search] answer rule {chosen} (dense on {len(dense)} calibration items: "
        + ", ".join(f"{rule} {acc:.3f}" for rule, acc in accuracy.items()) + f"; default {default})")
    choice = {"rule": chosen, "default": default, "accuracy_by_rule": accuracy, "n": len(dense),
              "how": "the most accurate rule on the dense answers of the calibration items; a tie keeps the default"}
    return choice, [answered_by(item, chosen) for item in dense]


def _threads() -> int:
    import torch
    return torch.get_num_threads()


@register_search("litestage")
def search_command(session, bench: str, args, config, command: str, log) -> dict:
    """`litestage-bench search --method litestage`: options from the command line."""
    return search(session, bench, options_from_args(args), config, data_dir=args.data_dir, command=command,
                  store_dir=getattr(args, "rows", None), log=log)


def _throughput_option(args) -> tuple[int, int, int] | None:
    """(B, chunks, rounds) of `--timing batch=B`, None for `--timing latency`."""
    from ..records.throughput import parse_timing

    batch = parse_timing(getattr(args, "timing", "latency"))
    return None if batch == 1 else (batch, args.chunks, args.chunk_rounds)


def options_from_args(args) -> SearchOptions:
    """The search options of parsed `litestage-bench search` arguments."""
    return SearchOptions(
        target="agreement" if args.min_agreement is not None else "accuracy",
        tolerance=args.tolerance if args.tolerance is not None else 4.0,
        min_agreement=args.min_agreement if args.min_agreement is not None else 0.9,
        limit=args.limit or SearchOptions.limit,
        # a --limit below the default timed count times all its items (an explicit --timed is checked)
        timed=args.timed or min(SearchOptions.timed, args.limit or SearchOptions.limit), rounds=args.rounds,
        batch_size=args.batch_size, granularity=args.granularity, ranking=args.ranking,
        budget="uniform" if args.uniform else "stagewise", max_skip=args.max_skip, step=args.step,
        coarse_step=args.coarse_step, efficacy_share=args.efficacy_share,
        futility_confidence=args.futility_confidence, throughput=_throughput_option(args),
        latency_fit=None if args.latency_fit.lower() == "none" else args.latency_fit,
        patience=args.patience, looks=args.looks, confidence=args.confidence, iterative_pool=args.iterative_pool,
        early_exit=not args.no_early_exit, harm_profile=args.harm_profile, seed=args.seed,
        importance_items=args.importance_items, choose_rule=getattr(args, "answer_rule", None) == "auto")
