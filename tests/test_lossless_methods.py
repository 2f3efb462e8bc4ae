"""The lossless methods (methods/speculative.py): policies, plans, the choice rules and a whole
(tiny) draft search whose policies run and answer exactly as dense."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
from test_reasoner import assert_same
from tiny_reasoner import DRAFTED, QUESTIONS, calibration_splits, reasoner, split_loader

from litestage_bench.core.errors import UserError
from litestage_bench.engine.method import ModelFacts
from litestage_bench.engine.plan import DENSE, STAGES, SkipSet
from litestage_bench.methods import litestage, speculative
from litestage_bench.methods.registry import make_method
from litestage_bench.methods.speculative import (DraftSearchOptions, LiteStageSpec, SelfSpec, choose_selfspec,
                                                 choose_stagewise, policy_from_search)

FACTS = ModelFacts("tiny", 4, (1,) * 4, (1,) * 4)
DRAFT = {"skip": {"attn": [1], "ffn": [2]}, "k": 3, "min_confidence": None}


def _selfspec(**over):
    return {"schema_version": 1, "method": "selfspec", "model": "tiny", "num_layers": 4, "draft": DRAFT, **over}


def _stagewise(**over):
    stages = {"recall": {"draft": DRAFT}, "analyze": {"draft": None}, "summarize": {"draft": {**DRAFT, "k": 2}}}
    return {"schema_version": 1, "method": "litestage-spec", "model": "tiny", "num_layers": 4, "stages": stages, **over}


def test_selfspec_drafts_every_stage_with_one_draft():
    plan = SelfSpec(_selfspec()).plan(FACTS)
    for s in STAGES:
        stage = plan.for_stage(s)
        assert stage.decode == SkipSet() and stage.draft.plan.decode == SkipSet.of(attn=[1], ffn=[2])
        assert stage.draft.k == 3


def test_litestage_spec_drafts_per_stage_and_leaves_undrafted_stages_dense():
    plan = LiteStageSpec(_stagewise()).plan(FACTS)
    assert plan.for_stage("analyze").is_dense()
    assert plan.for_stage("summarize").draft.k == 2
    assert make_method("litestage-spec", _stagewise()).describe()["lossless"] is True


@pytest.mark.parametrize("policy, match", [
    (_selfspec(model="other"), "searched for model"), (_selfspec(num_layers=30), "30 layers"),
    (_selfspec(method="litestage"), "not a selfspec policy"), (_selfspec(draft={**DRAFT, "k": 0}), "draft.k"),
    (_selfspec(draft={"skip": {"attn": [9]}, "k": 2}), "draft.skip.attn"), (_stagewise(stages={"recall": {}, "x": {}}), "stage"),
])
def test_bad_policies_are_one_line_errors(policy, match):
    with pytest.raises(UserError, match=match):
        make_method(policy["method"] if policy["method"] != "litestage" else "selfspec", policy).plan(FACTS)


def _row(n, speedup, stage_speedups, lows):
    return {"n_skip": n, "k": 2, "draft": {**DRAFT, "skip": {"attn": list(range(n))}}, "speedup": speedup,
            "ci95": [speedup - 0.1, speedup + 0.1],
            "stages": {s: {"speedup": x, "ci95": [lo, x + 0.1]} for s, x, lo in zip(STAGES, stage_speedups, lows)}}


def test_choice_rules():
    rows = [_row(1, 0.95, (1.20, 0.90, 1.05), (1.02, 0.80, 0.99)),
            _row(2, 0.90, (1.30, 0.85, 1.10), (0.98, 0.70, 1.01))]
    assert choose_selfspec(rows)["n_skip"] == 1  # the highest total, even below 1.0x
    chosen = choose_stagewise(rows)
    # recall: row 2 is faster but not surely faster than dense; row 1 is
    assert chosen["recall"]["n_skip"] == 1 and chosen["analyze"] is None and chosen["summarize"]["n_skip"] == 2
    policy = policy_from_search("litestage-spec", {"candidates": rows, "model": "tiny", "num_layers": 4}, "cmd")
    assert policy["stages"]["analyze"] == {"draft": None, "n_skip": 0, "k": None, "speedup": None, "ci95": None}
    LiteStageSpec(policy).plan(FACTS)


def test_draft_search_on_calibration_items_gives_lossless_policies(model, tokenizer, monkeypatch, tmp_path):
    splits = calibration_splits()
    monkeypatch.setattr(litestage, "load_split", split_loader(splits))  # the shared calibration loader
    r = reasoner(model, tokenizer)
    seen: set[str] = set()
    solve, solve_batch = r.solve, r.solve_batch
    monkeypatch.setattr(r, "solve", lambda q, *a, **kw: seen.add(q.id) or solve(q, *a, **kw))
    monkeypatch.setattr(r, "solve_batch", lambda qs, *a, **kw: seen.update(q.id for q in qs) or solve_batch(qs, *a, **kw))
    session = SimpleNamespace(reasoner=lambda bench, cfg, data_dir=None: r, executor=r.ex,
                              loaded=SimpleNamespace(name="tiny", source="test", dtype="float32", numerics="float32"))
    opts = DraftSearchOptions(limit=4, timed=2, skips=(1, 2), ks=(1, 3), batch_size=2)
    found = speculative.search_drafts(session, "obqa", opts, r.cfg, cache_dir=tmp_path, log=lambda m: None)
    assert seen and seen <= {q.id for q in splits["calib"]}
    assert [(c["n_skip"], c["k"]) for c in found["candidates"]] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    for row in found["candidates"]:
        assert row["identical"] == row["n_timed"] == 2  # lossless on every timed item
        assert set(row["stages"]) == set(STAGES)
    again = speculative.search_drafts(session, "obqa", opts, r.cfg, cache_dir=tmp_path, log=lambda m: None)
    # the second method's search reuses the measurements (as JSON: a refused interval's nan bounds
    # compare unequal to themselves)
    assert json.dumps(again["candidates"]) == json.dumps(found["candidates"])
    assert again["search_cost"]["read_from"] and "read_from" not in found["search_cost"]
    for name in ("selfspec", "litestage-spec"):
        policy = json.loads(json.dumps(policy_from_search(name, found, "cmd")))
        plan = make_method(name, policy).plan(FACTS)
        for q in QUESTIONS[:2]:
            assert_same(r.solve(q, plan), r.solve(q, DENSE))


def test_break_even_acceptance():
    from litestage_bench.studies.lossless import break_even_acceptance

    # free drafts and a verify as cheap as a dense step: any acceptance breaks even
    assert break_even_acceptance(4, 0.0, 1.0) == 0.0
    # k=2, draft 0.5, verify 1.0: a round costs 2 dense steps, so 1 + a + a^2 = 2 -> a = 0.618
    assert break_even_acceptance(2, 0.5, 1.0) == pytest.approx((5 ** 0.5 - 1) / 2, abs=1e-9)
    # drafts as dear as dense steps: not even full acceptance pays (4 * 1.0 + 1.2 > 5 tokens)
    assert break_even_acceptance(4, 1.0, 1.2) is None
    assert break_even_acceptance(4, 0.9, 1.2) == pytest.approx(0.98, abs=0.01)  # 4.8 of at most 5 tokens


def test_record_drafting_summary_and_identity_count(model, tokenizer):
    from litestage_bench.records.results import build_record, record_from_dict, record_to_dict
    from litestage_bench.studies.lossless import lossless_markdown
    r = reasoner(model, tokenizer)
    drafted = [r.solve(q, DRAFTED) for q in QUESTIONS]
    dense = [r.solve(q, DENSE) for q in QUESTIONS]
    rec = build_record(model="tiny", benchmark="obqa", split="eval", method="selfspec", policy={"name": "selfspec"},
                       answer_rule="cloze", items=drafted, command="cmd", config={}, dense_items=dense)
    assert rec.fidelity["identical_outputs"] == len(QUESTIONS) and rec.fidelity["agreement"] == 1.0
    spec = rec.speculative
    for s in STAGES:
        assert spec[s]["drafted"] == sum(it.speculative[s]["drafted"] for it in drafted)
        assert 1.0 <= spec[s]["tokens_per_step"] <= 1 + DRAFTED.for_stage(s).draft.k
        assert 0.0 < spec[s]["draft_cost_fraction"] < 1.0  # every draft skips something
    assert spec["total"]["verify_steps"] == sum(spec[s]["verify_steps"] for s in STAGES)
    # batch-1 (timed) items give the seconds; the counts still come from every item
    assert spec["seconds_from"] == f"{len(QUESTIONS)} timed items"
    half = [d if i % 2 else replace(d, latency_s=math.nan) for i, d in enumerate(drafted)]
    part = build_record(model="tiny", benchmark="obqa", split="eval", method="selfspec", policy={}, answer_rule="cloze",
                        items=half, command="cmd", config={}).speculative
    assert part["recall"]["drafted"] == spec["recall"]["drafted"]
    assert part["recall"]["timed_drafted"] == sum(it.speculative["recall"]["drafted"] for it in half[1::2])
    assert part["recall"]["draft_s"] == pytest.approx(sum(it.speculative["recall"]["draft_s"] for it in half[1::2]))
    assert record_from_dict(json.loads(json.dumps(record_to_dict(rec)))).speculative == spec
    text = lossless_markdown([rec], "cmd")
    assert "identical outputs" in text and f"{len(QUESTIONS)}/{len(QUESTIONS)}" in text


def test_bandwidth_bound_estimate():
    from litestage_bench.studies.lossless import bandwidth_bound_speedup

    # 3 tokens per verify step from 2 drafts at half the FLOPs: 3 / (2 * 0.5 + 1) = 1.5x
    spec = {"verify_steps": 10, "drafted": 20, "tokens_per_step": 3.0, "draft_cost_fraction": 0.5}
    assert bandwidth_bound_speedup(spec) == pytest.approx(1.5)
    assert bandwidth_bound_speedup({**spec, "draft_cost_fraction": None}) is None
