"""One grid case on a tiny random llama (SmolLM2's tokenizer, real OBQA items and prompts): its
accuracy is cached and re-read, only the timing re-runs; stage selections restrict the plan;
the record compares with dense; a missing search policy is searched once and reported apart."""
from __future__ import annotations

import math

import pytest
from test_grid_cases import DEFAULTS
from tiny_reasoner import CAPS, smollm2_tokenizer, tiny_llama

from litestage_bench.core.errors import UserError
from litestage_bench.engine.executor import SkipExecutor
from litestage_bench.engine.models import LoadedModel
from litestage_bench.engine.plan import STAGES, SkipPlan, SkipSet, StagePlan
from litestage_bench.evaluation.runner import Session
from litestage_bench.grid.cache import AccuracyCache
from litestage_bench.grid.cases import GridCase, selection_from_options, slug
from litestage_bench.grid.run import GridContext, run_case
from litestage_bench.grid.store import GridStore, extra_info
from litestage_bench.records.report import throughput_cell
from litestage_bench.methods.registry import METHODS, SEARCHES, Method


class FakeBenchmark:
    """pytest-benchmark's fixture, reduced to what a case uses."""

    def __init__(self) -> None:
        self.extra_info: dict = {}
        self.calls = 0

    def pedantic(self, target, args=(), kwargs=None, rounds=1, iterations=1):
        self.calls += 1
        return target(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")  # stands for a local model folder
    tok = smollm2_tokenizer()
    model = tiny_llama(tok)
    loaded = LoadedModel(name=str(folder), model=model, tokenizer=tok, dtype="float32", source=str(folder),
                         load_seconds=0.0, from_cache=False)
    return str(folder), Session(loaded, SkipExecutor(model))


def context(tiny, tmp_path, **options) -> GridContext:
    model, session = tiny
    opts = {**DEFAULTS, "--models": model, "--benches": "obqa", "--limit": 3, "--timed": 2, "--batch-size": 2,
            "--policy-dir": str(tmp_path / "committed"), **options}
    sel = selection_from_options(opts.__getitem__, main_job=True)
    ctx = GridContext(sel, AccuracyCache(tmp_path / "cache"), "pytest (test)", search_dir=tmp_path / "searched",
                      config_overrides={"max_new_tokens": dict(CAPS), "answer_rule": "cloze"}, log=lambda m: None)
    ctx._session = (model, session)  # the tiny model in place of a load
    return ctx


def test_case_accuracy_is_cached_and_only_timing_reruns(tiny, tmp_path):
    ctx = context(tiny, tmp_path)
    model = tiny[0]
    store = GridStore()
    cases = [GridCase(model, "obqa"), GridCase(model, "obqa", "unified", 1),
             GridCase(model, "obqa", "unified", 1, ("analyze",))]
    for case in cases:
        bench = FakeBenchmark()
        result = run_case(case, ctx, bench)
        store.add(result)
        assert bench.calls == 1 and not result.accuracy_cached
        assert len(result.items) == 3 and result.timing["n_timed"] == 2
        assert sum(math.isfinite(r.latency_s) for r in result.items) == 2
        assert result.timing["batch1_vs_batched"]["answer_flips"] == 0  # float32: batch 1 equals batched
    dense, unified, analyze_only = (store.results[c.id] for c in cases)
    assert all(r.executed_cost_fraction["recall"] == 1.0 for r in analyze_only.items)
    assert all(r.executed_cost_fraction["analyze"] < 1.0 for r in analyze_only.items)
    assert len({dense.cache_key, unified.cache_key, analyze_only.cache_key}) == 3

    record = store.record_for(unified)
    info = extra_info(unified, record)
    assert record.fidelity is not None and record.speedup is not None and info["speedup"] == record.speedup
    for key in ("accuracy", "accuracy_ci95", "fidelity", "mcnemar_p", "tokens", "executed_cost_fraction",
                "stage_latency_s", "speedup_ci95", "accuracy_cached"):
        assert key in info
    assert set(info["tokens"]) == set(STAGES)

    again = run_case(cases[1], ctx, FakeBenchmark())  # a second run: the cache answers, the timing re-runs
    assert again.accuracy_cached and again.cache_key == unified.cache_key
    assert [(r.id, r.prediction, r.outputs) for r in again.items] == [(r.id, r.prediction, r.outputs) for r in unified.items]
    # a new reasoner setting is a new entry
    changed = context(tiny, tmp_path)
    changed.config_overrides["answer_rule"] = "letter"
    assert not run_case(cases[1], changed, FakeBenchmark()).accuracy_cached


def test_a_case_times_throughput_at_batch_b_beside_its_latency(tiny, tmp_path):
    """--timing batch=2: a non-dense case also solves chunks of 2 of its items as one batch, interleaved
    with dense; its record carries the throughput speedup and the factors, dense's case does not."""
    ctx = context(tiny, tmp_path, **{"--limit": 6, "--timing": "batch=2", "--chunk-rounds": 2})
    model = tiny[0]
    store = GridStore()
    for case in (GridCase(model, "obqa"), GridCase(model, "obqa", "unified", 1)):
        store.add(run_case(case, ctx, FakeBenchmark()))
    dense, unified = (store.results[c] for c in (f"{slug(model)}-obqa-dense", f"{slug(model)}-obqa-unified-k1"))
    assert "throughput" not in dense.timing
    t = unified.timing["throughput"]
    assert t["batch_size"] == 2 and t["n_chunks"] == 3 and t["rounds"] == 2 and t["ci95_refused"] is None
    assert [len(c) for c in t["chunk_ids"]] == [2, 2, 2] and t["throughput_speedup"] > 0
    assert throughput_cell(store.record_for(unified)).endswith(")") and " b2 " in throughput_cell(store.record_for(unified))
    with pytest.raises(UserError, match="batch=8 needs at least 8 items"):
        context(tiny, tmp_path, **{"--limit": 6, "--timing": "batch=8"})


class Searched(Method):
    """A stand-in for a method whose policy comes from a search."""

    name = "fake_searched"
    needs_search = True

    def __init__(self, policy=None) -> None:
        if not policy or policy.get("method") != self.name:
            raise UserError("fake_searched needs its policy", "search it")
        self.layers = policy["layers"]

    def plan(self, facts):
        return SkipPlan.uniform(StagePlan.static(SkipSet.layers(self.layers)), STAGES, self.name)


def test_missing_policy_is_searched_once_and_reported_apart(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LITESTAGE_CACHE", str(tmp_path / "user-cache"))  # the search lock lives there
    searches = []

    def search(session, bench, args, config, command, log):
        searches.append((args.method, args.bench, args.limit, command))
        return {"method": "fake_searched", "layers": [2], "search_cost": {"stage_runs": 3}}

    monkeypatch.setitem(METHODS, "fake_searched", Searched)
    monkeypatch.setitem(SEARCHES, "fake_searched", search)
    model = tiny[0]
    case = GridCase(model, "obqa", "fake_searched")
    with pytest.raises(UserError, match="--no-search"):
        context(tiny, tmp_path, **{"--no-search": True}).policy(case)

    ctx = context(tiny, tmp_path, **{"--search-limit": 4})
    result = run_case(case, ctx, FakeBenchmark())
    policy, source = ctx.policy(case)  # a second case of the same policy: no second search
    assert len(searches) == 1 and searches[0][:3] == ("fake_searched", "obqa", 4)
    assert source["source"] == "searched" and source["seconds"] >= 0 and source["stage_runs"] == 3
    assert result.search["source"] == "searched" and "search" not in result.timing
    assert (tmp_path / "searched" / f"{slug(model)}_obqa_fake_searched.json").is_file()
    # another process finds the file the search wrote
    _, later = context(tiny, tmp_path).policy(case)
    assert later["source"] == "searched earlier" and len(searches) == 1


@pytest.mark.parametrize("method", ["selfspec", "litestage-spec"])
def test_lossless_cases_run_in_the_grid_and_equal_dense(tiny, tmp_path, method):
    """A lossless method's grid case (committed policy) answers exactly as the dense case and its
    record carries the drafting metrics and n/n identical outputs."""
    import json
    model = tiny[0]
    committed = tmp_path / "committed"
    committed.mkdir()
    draft = {"skip": {"attn": [1], "ffn": [2]}, "k": 3, "min_confidence": None}
    policy = {"schema_version": 1, "method": method, "model": model, "num_layers": 4, "draft": draft,
              "stages": {s: {"draft": draft if s != "analyze" else None} for s in STAGES}}
    (committed / f"{slug(model)}_obqa_{method}.json").write_text(json.dumps(policy))
    ctx = context(tiny, tmp_path, **{"--methods": method})
    store = GridStore()
    for case in ctx.selection.cases():
        store.add(run_case(case, ctx, FakeBenchmark()))
    dense, lossless = (store.results[c.id] for c in ctx.selection.cases())
    assert lossless.case.method == method
    record = store.record_for(lossless)
    assert record.fidelity["identical_outputs"] == record.n == 3
    assert record.speculative is not None and record.speculative["total"]["verify_steps"] > 0
    assert record.speculative["seconds_from"] == "2 timed items"  # the batch-1 run's drafting seconds
    assert [r.outputs for r in lossless.items] == [r.outputs for r in dense.items]


def test_a_cpu_process_warms_up_once_then_only_what_is_cold():
    """The first timed case of a process solves the warm-up questions under each pipeline; later cases
    skip it for a plan already warmed (dense) and for a method whose accuracy pass just ran here (its
    header caches are filled); a method whose accuracy came from the cache still warms up. CUDA always does."""
    from types import SimpleNamespace

    from litestage_bench.engine.plan import DENSE, SkipPlan, SkipSet, StagePlan
    from litestage_bench.grid.run import _warm

    solved = []
    reasoner = SimpleNamespace(ex=SimpleNamespace(device=SimpleNamespace(type="cpu")),
                               solve=lambda q, plan, callbacks: solved.append(q))
    ctx = SimpleNamespace(warmed=set())
    skip = SkipPlan(stages={"recall": StagePlan.static(SkipSet.layers([1]))})
    assert _warm(ctx, reasoner, "obqa", (DENSE, {}), ["q"], filled=False) == 1  # first case: full warm-up
    assert _warm(ctx, reasoner, "obqa", (skip, {}), ["q"], filled=True) == 0  # accuracy ran here
    assert _warm(ctx, reasoner, "obqa", (DENSE, {}), ["q"], filled=False) == 0  # warmed before
    other = SkipPlan(stages={"recall": StagePlan.static(SkipSet.layers([2]))})
    assert _warm(ctx, reasoner, "obqa", (other, {}), ["q"], filled=False) == 1  # accuracy from the cache
    assert _warm(ctx, reasoner, "csqa", (DENSE, {}), ["q"], filled=False) == 1  # another benchmark's header
    reasoner.ex.device.type = "cuda"
    assert _warm(ctx, reasoner, "obqa", (DENSE, {}), ["q", "r"], filled=True) == 2
    assert len(solved) == 5
