"""A few checks on the embedded default model (SmolLM2-135M, float32 for exact comparisons)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from litestage_bench.cli import main
from litestage_bench.engine.executor import CostMeter, SkipExecutor
from litestage_bench.engine.models import load_model
from litestage_bench.engine.plan import DENSE, StagePlan
from litestage_bench.evaluation.benchmarks import load_split
from litestage_bench.evaluation.runner import Session, default_config
from litestage_bench.studies.naive import NaiveReasoner

pytestmark = pytest.mark.slow
needs_data = pytest.mark.skipif(not os.environ.get("LITESTAGE_DATA_DIR"), reason="no LITESTAGE_DATA_DIR")


@pytest.fixture(scope="module")
def session():
    return Session.open("smollm2-135m", dtype="float32")


def test_second_load_comes_from_the_cache(session):
    again = load_model("smollm2-135m", dtype="float32")
    assert again.from_cache
    a = dict(session.loaded.model.named_parameters())
    for name, p in list(again.model.named_parameters())[:5]:
        assert torch.equal(p, a[name])


def test_empty_plan_equals_plain_transformers(session):
    model, tok = session.loaded.model, session.loaded.tokenizer
    ids = tok("Question: Which of these would let the most heat travel through?\nRecall:").input_ids
    with torch.inference_mode():
        ref_logits = model(torch.tensor([ids])).logits[0, -1]
        ref = model.generate(torch.tensor([ids]), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                             pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    ex = SkipExecutor(model)
    cache = ex.new_cache(1)
    x = torch.tensor([ids])
    prefill = ex.forward(cache, x, torch.ones_like(x, dtype=torch.bool), StagePlan().prefill, StagePlan(), CostMeter())
    assert torch.allclose(prefill[0, -1], ref_logits, atol=1e-4)  # float32; observed ~3e-5
    assert ex.generate([ids], StagePlan(), 24).tokens[0] == ref


@needs_data
def test_kv_reuse_and_shared_prefix_change_nothing(session):
    items = load_split("obqa", limit=2)
    outputs = []
    for fast in (True, False):
        cfg = default_config(session.loaded, reuse_kv=fast, share_prefix=fast)
        reasoner = session.reasoner("obqa", cfg)
        outputs.append([(r.outputs, r.predictions_by_rule) for r in (reasoner.solve(q, DENSE) for q in items)])
    assert outputs[0] == outputs[1]


@needs_data
@pytest.mark.parametrize("bench", ["strategyqa", "obqa"])  # OBQA: multi-token options, left-padded
def test_executor_reasoner_agrees_with_the_naive_pipeline(session, bench):
    cfg = default_config(session.loaded)
    reasoner = session.reasoner(bench, cfg)
    naive = NaiveReasoner(session.loaded.model, session.loaded.tokenizer, reasoner.prompts, cfg)
    for q in load_split(bench, limit=2 if bench == "strategyqa" else 1):
        assert reasoner.solve(q, DENSE).predictions_by_rule == naive.solve(q)[0]


@needs_data
def test_run_writes_a_complete_record(tmp_path):
    out = tmp_path / "rec.json"
    assert main(["run", "--bench", "strategyqa", "--limit", "2", "--dtype", "float32", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    for key in ("schema_version", "model", "benchmark", "split", "n", "method", "policy", "accuracy", "accuracy_ci95",
                "latency_s", "stage_latency_s", "tokens", "speedup", "executed_cost_fraction", "answer_rule_counts",
                "machine", "created", "command"):
        assert key in rec, key
    assert rec["n"] == 2 and rec["method"] == "dense" and rec["speedup"] == 1.0
    assert set(rec["stage_latency_s"]) == {"recall", "analyze", "summarize"}
    assert rec["executed_cost_fraction"] == {"recall": 1.0, "analyze": 1.0, "summarize": 1.0}
    assert sum(rec["answer_rule_counts"].values()) == 2
    assert rec["machine"]["torch"] and rec["machine"]["transformers"]


@needs_data
def test_header_cache_and_batching_change_nothing_on_smollm2(session):
    """float32: the shared-header cache and several questions per batch give the same outputs."""
    items = load_split("obqa", limit=2)
    cached = session.reasoner("obqa", default_config(session.loaded))
    plain = session.reasoner("obqa", default_config(session.loaded, header_cache=False))
    one_by_one = [cached.solve(q, DENSE) for q in items]
    for q, a in zip(items, one_by_one):
        b = plain.solve(q, DENSE)
        assert (a.outputs, a.predictions_by_rule) == (b.outputs, b.predictions_by_rule)
    for a, b in zip(one_by_one, cached.solve_batch(items, DENSE)):
        assert (a.outputs, a.predictions_by_rule) == (b.outputs, b.predictions_by_rule)
        assert a.option_scores["cloze"] == pytest.approx(b.option_scores["cloze"], abs=1e-4)


def test_bf16_matmul_stays_near_float32_on_smollm2(session):
    """The fast path on the real model: logits of every position of a prompt within 5% of the float32
    logits' range (observed 0.9% on this 59-token prompt), and the same greedy token at nearly every
    position (observed: all) (the greedy
    token is exact given the hidden state; the hidden states differ by bf16 rounding)."""
    fast = Session.open("smollm2-135m", numerics="bf16-matmul")
    assert fast.loaded.numerics == "bf16-matmul" and fast.loaded.dtype == "float32"
    tok = session.loaded.tokenizer
    ids = tok("Question: Which of these would let the most heat travel through? (A) a new pair of jeans "
              "(B) a steel spoon in a cafeteria (C) a cotton candy at a store (D) a calvin klein cotton hat\n"
              "Recall: Metal is a thermal conductor.").input_ids
    logits = {}
    for name, s in (("float32", session), ("fast", fast)):
        ex = s.executor
        x = torch.tensor([ids])
        logits[name] = ex.forward(ex.new_cache(1), x, torch.ones_like(x, dtype=torch.bool), StagePlan().prefill,
                                  StagePlan(), CostMeter(), logits="all")[0]
    ref, got = logits["float32"], logits["fast"]
    assert float((got - ref).abs().max()) <= 0.05 * float(ref.max() - ref.min())
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_answers_from_re_times_a_record_and_refuses_answers_this_code_does_not_reproduce(tmp_path, capsys):
    dense, first, again = tmp_path / "dense.json", tmp_path / "k2.json", tmp_path / "k2-retimed.json"
    common = ["run", "--bench", "strategyqa", "--limit", "2", "--timed", "1", "--rounds", "1", "--dtype", "float32"]
    method = [*common, "--method", "unified", "--k", "2", "--dense-record", str(dense)]
    assert main([*common, "--out", str(dense)]) == 0
    assert main([*method, "--out", str(first)]) == 0
    assert main([*method, "--answers-from", str(first), "--out", str(again)]) == 0
    a, b = json.loads(first.read_text()), json.loads(again.read_text())
    assert [it["outputs"] for it in a["items"]] == [it["outputs"] for it in b["items"]]
    assert b["extra"]["answers_from"] == {"record": str(first), "command": a["command"]}
    assert b["timing"]["rounds"] == 1 and b["timing"]["timed_ids"] == a["timing"]["timed_ids"]
    # another policy, and answers this code does not reproduce: one-line errors, no record
    capsys.readouterr()
    k4 = [*common, "--method", "unified", "--k", "4", "--dense-record", str(dense), "--answers-from", str(first)]
    assert main([*k4, "--out", str(tmp_path / "k4.json")]) == 2
    assert "policy differs in k" in capsys.readouterr().err
    timed = set(b["timing"]["timed_ids"])
    untimed = next(it["id"] for it in a["items"] if it["id"] not in timed)
    # an executed cost this code does not count (an untimed item of the timed item's batch, re-run batched)
    costly = {**a, "items": [{**it, "executed_cost_fraction": {**it["executed_cost_fraction"], "recall": 0.5}}
                             if it["id"] == untimed else it for it in a["items"]]}
    first.write_text(json.dumps(costly))
    assert main([*method, "--answers-from", str(first), "--out", str(tmp_path / "bad.json")]) == 2
    assert f"1 of the 2 items of a re-run batch differ from {first} in outputs or executed costs" in capsys.readouterr().err
    # dense's answers this code does not reproduce on the timed item (at batch 1)
    first.write_text(json.dumps(a))
    d = json.loads(dense.read_text())
    d["items"] = [{**it, "outputs": {**it["outputs"], "recall": "changed"}} if it["id"] in timed else it
                  for it in d["items"]]
    dense.write_text(json.dumps(d))
    assert main([*method, "--answers-from", str(first), "--out", str(tmp_path / "bad.json")]) == 2
    assert f"1 of the 1 timed items' outputs differ from {dense}" in capsys.readouterr().err
    assert not (tmp_path / "k4.json").exists() and not (tmp_path / "bad.json").exists()
