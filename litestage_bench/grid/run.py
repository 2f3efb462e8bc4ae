"""Running one grid case: its policy (committed, or searched now), its accuracy (batched, cached
on disk) and its latency (batch 1, timed by pytest-benchmark).

As `litestage-bench run` does, accuracy is computed `batch_size` questions at a time on all the
case's items and latency at batch 1 on a seeded subset (`timed`), after one untimed warm-up
question per pipeline (on CUDA, an untimed pass over the whole subset). Every non-dense case
times dense and its method back to back on each timed item, R rounds with the order alternating
(`runner.time_items`), so its speedup pairs latencies measured moments apart. Dense is also a case
of its own: its answers are every case's reference, paired once the cases are merged (a main job
with one model x benchmark deals its cases out over the xdist workers; float32 answers do not
depend on the process).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.code_version import code_version
from ..core.errors import UserError
from ..core.locking import file_lock
from ..engine.models import cache_root, weights_id
from ..engine.plan import DENSE, SkipPlan
from ..evaluation.benchmarks import DATA_DIR_ENV, data_fingerprint, load_split, subset
from ..evaluation.packaged import sha256_file
from ..evaluation.reasoner import Reasoner, ReasonerConfig
from ..evaluation.runner import (SEED, Session, chance_rate, checked_plan, default_config, evaluate_items,
                                 throughput_timing,
                                 method_callbacks, model_facts, seed_everything, time_items)
from ..methods.registry import SEARCHES, Method, load_policy, make_method
from ..records.noise import compact, compare, noise_floor_for
from ..records.results import atomic_write
from ..records.timing import with_latencies
from .cache import AccuracyCache, cache_key
from .cases import GridCase, GridSelection, needs_search
from .store import CaseResult


class StageRestricted(Method):
    """A method whose plan and token rules apply only in the selected stages (others run dense)."""

    def __init__(self, inner: Method, stages: tuple[str, ...]) -> None:
        self.inner, self.stages, self.name = inner, stages, inner.name

    def plan(self, facts):
        plan = self.inner.plan(facts)
        return SkipPlan({s: p for s, p in plan.stages.items() if s in self.stages}, plan.name)

    def token_callback(self, stage):
        return self.inner.token_callback(stage) if stage in self.stages else None

    def describe(self):
        return {**self.inner.describe(), "grid_stages": list(self.stages)}  # LiteStage's own "stages" kept

    def check_model(self, model: str) -> None:
        self.inner.check_model(model)


class GridContext:
    """Per-process state of the grid: the selection, one loaded model at a time with a reasoner
    per benchmark, the accuracy cache, policies found or searched, and the finished cases."""

    def __init__(self, selection: GridSelection, cache: AccuracyCache, command: str, *,
                 search_dir: Path, worker: str = "main", device: str | None = None,
                 log: Callable[[str], None] = print, config_overrides: dict | None = None) -> None:
        self.selection, self.cache, self.command = selection, cache, command
        self.search_dir = search_dir  # where policies searched in this run are written
        self.worker, self.device = worker, device or selection.device
        self.log = log
        self.config_overrides = dict(config_overrides or {})
        self._session: tuple[str, Session] | None = None
        self._reasoners: dict[str, tuple[Reasoner, ReasonerConfig]] = {}
        self._policies: dict[Path, tuple[dict, dict]] = {}
        self.warmed: set[tuple] = set()  # (benchmark, plan) pipelines this process has warmed up

    # --- model and reasoners (one model in memory at a time)
    def session(self, model: str) -> Session:
        if self._session is None or self._session[0] != model:
            self._session = None
            self._reasoners.clear()
            self._session = (model, Session.open(model, dtype=self.selection.dtype, device=self.device,
                                                   numerics=self.selection.numerics))
        return self._session[1]

    def reasoner(self, model: str, bench: str) -> tuple[Reasoner, ReasonerConfig]:
        session = self.session(model)
        if bench not in self._reasoners:
            config = default_config(session.loaded, **self.config_overrides)
            self._reasoners[bench] = (session.reasoner(bench, config), config)
        return self._reasoners[bench]

    # --- policies of the methods that need a search
    def policy(self, case: GridCase) -> tuple[dict | None, dict | None]:
        """(policy dict, where it came from) for a method with a search; (None, None) otherwise."""
        if case.method == "dense" or not needs_search(case.method):
            return None, None
        committed = self.selection.policy_path(case)
        if committed.is_file():
            return self._load(committed, {"source": "committed", "path": str(committed)})
        if not self.selection.search_missing:
            raise UserError(f"no policy {committed} for {case.method}", "drop --no-search, or commit one")
        target = self.search_dir / committed.name
        if target in self._policies:
            return self._policies[target]
        # two processes needing the same policy: one searches, the other waits and reads it
        lock = cache_root() / "locks" / f"policy-{hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:20]}.lock"
        with file_lock(lock, waiting=f"[grid] waiting for another process searching {target}"):
            if target.is_file():
                return self._load(target, {"source": "searched earlier", "path": str(target)})
            return self._search(case, target)

    def _load(self, path: Path, source: dict) -> tuple[dict, dict]:
        if path not in self._policies:
            policy = load_policy(path)
            self._policies[path] = (policy, {**source, "sha256": sha256_file(path)})
        return self._policies[path]

    def _search(self, case: GridCase, target: Path) -> tuple[dict, dict]:
        from ..cli import build_parser  # the search's own defaults, as `litestage-bench search` has them
        argv = ["search", "--model", case.model, "--bench", case.bench, "--method", case.method,
                "--batch-size", str(self.selection.batch_size), "--out", str(target)]
        if self.selection.search_limit:
            argv += ["--limit", str(self.selection.search_limit)]
        args = build_parser().parse_args(argv)
        session = self.session(case.model)
        _, config = self.reasoner(case.model, case.bench)
        command = "litestage-bench " + " ".join(argv)
        self.log(f"[grid] {case.model} {case.bench}: no committed {case.method} policy; searching: {command}")
        start = time.perf_counter()
        policy = SEARCHES[case.method](session, case.bench, args, config, command, self.log)
        seconds = time.perf_counter() - start
        atomic_write(target, lambda fh: json.dump(policy, fh, indent=1))
        cost = policy.get("search_cost", {})
        return self._load(target, {"source": "searched", "path": str(target), "seconds": seconds,
                                   "stage_runs": cost.get("stage_runs"), "command": command})

    def method(self, case: GridCase) -> tuple[Method, dict | None, dict | None]:
        policy, source = self.policy(case)
        if case.k is not None:
            policy = {**(policy or {}), "k": case.k}
        method = make_method(case.method, policy)
        method.check_model(case.model)
        return (method if case.method == "dense" else StageRestricted(method, case.stages)), policy, source


@lru_cache(maxsize=None)
def _data_fingerprint(bench: str, data_dir_env: str | None) -> dict:
    # a folder source hashes both splits: once per process and benchmark
    return data_fingerprint(bench)


def accuracy_config(ctx: GridContext, case: GridCase, method: Method, items, policy_source: dict | None,
                    reasoner: Reasoner, config: ReasonerConfig) -> dict:
    """Everything that decides a case's per-item results: the accuracy cache's key."""
    loaded = ctx.session(case.model).loaded
    # the few-shot demos as used (their text, not only their ids): they come from the data folder
    demos = hashlib.sha256(repr(reasoner.prompts.demos).encode()).hexdigest()[:20]
    return {
        "what": "litestage-bench grid accuracy", "model": case.model, "weights": weights_id(loaded),
        "dtype": loaded.dtype, "numerics": loaded.numerics, "device": torch.device(ctx.device).type,
        "data": _data_fingerprint(case.bench, os.environ.get(DATA_DIR_ENV)), "split": "eval", "seed": SEED, "items": [q.id for q in items],
        "method": method.describe(), "policy_sha256": (policy_source or {}).get("sha256"),
        "stages": list(case.stages), "config": config.to_dict(), "demos_sha256": demos,
        "batch_size": ctx.selection.batch_size,
        "code": code_version(),
    }


def _warm(ctx: GridContext, reasoner: Reasoner, bench: str, pipeline: tuple[SkipPlan, Any], warmup: list,
          filled: bool) -> int:
    """Solve the warm-up questions under a pipeline, untimed; the number solved. On a CPU a process
    warms up once per benchmark (its first timed case) and then per plan only what is still cold: the
    plan's header caches, which the accuracy pass fills when it ran here (`filled`) and dense's
    warm-up fills for dense. On CUDA every pipeline warms up every time (kernels load per shape)."""
    plan = pipeline[0]
    key = (bench, repr(plan.to_dict()))
    if reasoner.ex.device.type != "cuda" and ctx.warmed and (key in ctx.warmed or filled):
        return 0
    for q in warmup:
        reasoner.solve(q, *pipeline)
    ctx.warmed.add(key)
    return len(warmup)


def run_case(case: GridCase, ctx: GridContext, benchmark: Any) -> CaseResult:
    """Run one case; `benchmark` is pytest-benchmark's fixture (it times the batch-1 questions)."""
    sel = ctx.selection
    method, _, source = ctx.method(case)
    session = ctx.session(case.model)
    reasoner, config = ctx.reasoner(case.model, case.bench)
    facts = model_facts(session.executor, case.model)
    plan, callbacks = checked_plan(method, facts), method_callbacks(method)
    seed_everything()
    items = load_split(case.bench, "eval", limit=sel.limit, seed=SEED)
    key_config = accuracy_config(ctx, case, method, items, source, reasoner, config)
    label = f"{case.model} {case.bench} {case.method} {case.point}"
    if sel.main_job:
        ctx.log(f"[{label}] started on {ctx.worker}: accuracy on {len(items)} items, then "
                f"{sel.timed or len(items)} timed x {sel.rounds} rounds")

    start = time.perf_counter()
    results, cached = ctx.cache.get_or_compute(
        key_config, lambda checkpoint: evaluate_items(reasoner, plan, callbacks, items, sel.batch_size, label,
                                                      progress=sel.main_job, checkpoint=checkpoint), label, ctx.log)
    accuracy_seconds = time.perf_counter() - start

    timed_items = subset(items, sel.timed, SEED)
    # dense and the method back to back on every timed item, R rounds (runner.time_items): the
    # speedup is a ratio measured side by side, whatever the machine did between cases
    pipelines = {"m": (plan, callbacks)}
    if case.method != "dense":
        pipelines["dense"] = (DENSE, {})
    # Warm-up, not timed: the allocator and each plan's header cache. On CUDA every timed item: kernels load
    # lazily at first use of each shape, and with one question the group's first case (dense) paid for the
    # later cases' loads (a tiny model's dense read 3-4x slower than its 1-layer-skip plans on an H200).
    warmup = timed_items if session.executor.device.type == "cuda" else timed_items[:1]
    warmed = {name: _warm(ctx, reasoner, case.bench, pipeline, warmup, filled=name == "m" and not cached)
              for name, pipeline in pipelines.items()}
    start = time.perf_counter()
    clock = benchmark.pedantic(time_items, args=(reasoner, pipelines, timed_items),
                               # the main job: a line per timed item (at least one a minute)
                               kwargs={"label": label, "warmup": 0, "progress": sel.main_job, "rounds": sel.rounds,
                                       "progress_every": 1},
                               rounds=1, iterations=1)
    timed_seconds = time.perf_counter() - start
    timing = {"timed_ids": [q.id for q in timed_items], "n_timed": len(timed_items), "batch_size_timed": 1,
              "accuracy_batch_size": sel.batch_size, "warmup_questions": warmed, "seconds": timed_seconds,
              "rounds": sel.rounds, "interleaved_with_dense": "dense" in pipelines,
              # how often the batch-1 (timed) run reproduced the batched (or cached) one
              "batch1_vs_batched": compare([compact(r) for r in results], [compact(r) for r in clock["m"]])}
    if sel.timing_batch > 1 and case.method != "dense":
        chunks = max(1, min(sel.chunks, len(items) // sel.timing_batch))
        timing["throughput"] = throughput_timing(reasoner, {"method": pipelines["m"], "dense": pipelines["dense"]},
                                                 items, results, (sel.timing_batch, chunks, sel.chunk_rounds), SEED,
                                                 label)
    device = str(session.executor.device)
    return CaseResult(
        case=case, items=with_latencies(results, clock["m"]), dense_timed=clock.get("dense", []),
        policy=method.describe(), config=config.to_dict(),
        answer_rule=config.answer_rule, accuracy_cached=cached, accuracy_seconds=accuracy_seconds, timing=timing,
        search=source, dtype=session.loaded.dtype, numerics=session.loaded.numerics, device=device, threads=torch.get_num_threads(),
        worker=ctx.worker, chance=chance_rate(case.bench, "eval"),
        noise_floor=noise_floor_for(case.model, session.loaded.numerics, device),
        cache_key=cache_key(key_config) if ctx.cache.folder else None, command=ctx.command,
        extra={"load_seconds": session.loaded.load_seconds, "load_from_cache": session.loaded.from_cache,
               "limit": sel.limit, "seed": SEED, "demos": [d.question.id for d in reasoner.prompts.demos],
               "data": key_config["data"], "code_version": key_config["code"]})
