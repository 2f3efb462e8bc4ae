"""The latency model of skip plans (records/latency_*.py, studies/latency_fit.py) on synthetic
records timed from known costs: the fit recovers the costs, predicts a held-out record, reads every
method's policy, and refuses a malformed fit file in one line."""
from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest

from litestage_bench.core.errors import UserError
from litestage_bench.engine.plan import STAGES, SkipSet
from litestage_bench.records import latency_features as lf
from litestage_bench.records.items import ItemResult
from litestage_bench.records.latency_data import model_facts, prompt_constants, record_data
from litestage_bench.records.latency_features import FEATURES, plan_of_policy, reuse_flags
from litestage_bench.records.latency_model import (blocks_for, fit_blocks, fit_from_dict, load_fit, predict_items,
                                                  predict_record)
from litestage_bench.records.results import build_record, write_record
from litestage_bench.studies import latency_fit

LAYERS, SHARE = 30, 0.25
PROMPT = {"analyze": 15.0, "summarize_extra": 6.0}  # the synthetic prompts' structure
TRUE = {"pre_recall": 0.05, "pre_analyze": 0.08, "pre_summarize": 0.06, "pre_tok": 0.0005, "pre_attn": 0.0008,
        "pre_ffn": 0.0015, "pre_layers": 0.02, "pre_rows": 0.01, "pre_scored": 0.004, "dec_recall": -0.03,
        "dec_analyze": 0.02, "dec_summarize": 0.03, "fresh": 0.01, "step": 0.015, "step_attn": 0.012,
        "step_ffn": 0.02, "row": 0.002, "row_attn": 0.004, "row_ffn": 0.008, "exit": 0.004, "dynamic": 0.0,
        "ctx": 0.01, "verify": 0.0}
EXIT = {"window": 4, "threshold": 0.3, "confidence": "max_prob"}
POLICIES = {
    "layers4": {"name": "layers-k4", "layers": [3, 9, 15, 21]},
    "layers8": {"name": "layers-k8", "layers": [2, 5, 8, 11, 14, 17, 20, 23]},
    "ffn": {"name": "ffn", "stages": {s: {"attn": [], "ffn": [2, 4, 6, 8, 10, 12]} for s in STAGES}, "early_exit": {}},
    "stagewise": {"name": "stagewise", "early_exit": {"recall": EXIT, "analyze": None, "summarize": EXIT},
                  "stages": {"recall": {"attn": [25, 26], "ffn": []}, "analyze": {"attn": [3, 7, 9, 13], "ffn": [10]},
                             "summarize": {"attn": [1, 2, 3, 4, 5, 6], "ffn": []}}},
    "attn_exit": {"name": "attn", "stages": {s: {"attn": list(range(1, 11)), "ffn": []} for s in STAGES},
                  "early_exit": {"analyze": EXIT}},
    "skipdecode": {"name": "skipdecode-k6",
                   "skip_counts": {s: [min(6, 1 + t // 4) for t in range(30)] for s in STAGES}},
}
BENCHES = {"obqa": 4, "strategyqa": 2}  # options per question


def _fraction(plan, stage: str) -> float:
    skip = plan.for_stage(stage).decode
    return 1 - (SHARE * len(skip.attn) + (1 - SHARE) * len(skip.ffn)) / LAYERS


def _questions(bench: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"{bench}-{i}", "recall": float(rng.randint(30, 80)), "summarize": float(rng.randint(20, 50)),
             "tokens": {"recall": rng.randint(5, 40), "analyze": rng.randint(20, 120), "summarize": rng.randint(2, 16)}}
            for i in range(n)]


REUSED = {"layers4", "layers8", "ffn", "attn_exit", "dense"}  # plans whose stages continue one cache


def _oracle(name: str, q: dict, tokens: dict, options: int, theta: dict) -> tuple[dict, dict]:
    """Prefill tokens, and (prefill, rest) seconds per stage, written out from the model's definition
    (latency_features.py's docstring), apart from the code under test."""
    plan, exits = plan_of_policy(POLICIES.get(name, {"name": "dense"}))
    t, n, fresh = theta, LAYERS, name not in REUSED
    g = tokens
    again = q["recall"] + g["recall"]  # what a stage re-prefilled from the header feeds again
    prompts = {"recall": q["recall"], "analyze": PROMPT["analyze"] + fresh * again,
               "summarize": q["summarize"] + g["analyze"] + fresh * (again + PROMPT["summarize_extra"])}
    seconds, context = {}, q["recall"]
    for s in STAGES:
        sp, p = plan.for_stage(s), prompts[s]
        scored = q["summarize"] if s == "summarize" else 0.0
        pa, pf = n - len(sp.prefill.attn), n - len(sp.prefill.ffn)
        sa, sf = (n - len(sp.scoring_set().attn), n - len(sp.scoring_set().ffn)) if s == "summarize" else (pa, pf)
        blocks, scoring = {"recall": (1, 0), "analyze": (2, 0), "summarize": (1, 3)}[s]
        pre = (t[f"pre_{s}"] + p * t["pre_tok"] + ((p - scored) * pa + scored * sa) / n * t["pre_attn"]
               + ((p - scored) * pf + scored * sf) / n * t["pre_ffn"]
               + (blocks * (pa + pf) + scoring * (sa + sf)) / (2 * n) * t["pre_layers"]
               + (options if s != "recall" else 0) * t["pre_rows"] + scored * t["pre_scored"])
        rows = options if s == "analyze" else 1
        steps = g[s] / rows
        sets = [sp.skip_at(k) for k in range(max(round(steps), 1))] if sp.schedule else [sp.decode]
        na = sum(n - len(x.attn) for x in sets) / len(sets)
        nf = sum(n - len(x.ffn) for x in sets) / len(sets)
        rest = (t[f"dec_{s}"] + t["fresh"] * (fresh and s != "recall")
                + steps * (t["step"] + t["step_attn"] * na / n + t["step_ffn"] * nf / n)
                + (g[s] - steps) * (t["row"] + t["row_attn"] * na / n + t["row_ffn"] * nf / n)
                + t["exit"] * g[s] * (s in exits) + t["ctx"] * steps * na / n * (context + g[s] / (2 * rows)) / 1000)
        seconds[s] = (pre, rest)
        context += g[s]
    return prompts, seconds


def _side(name: str, q: dict, tokens: dict, options: int, scale: float, noise: random.Random | None) -> ItemResult:
    """An ItemResult timed in two rounds (with `noise`: 1% jitter) on a machine `scale` times slow."""
    prompts, secs = _oracle(name, q, tokens, options, TRUE)
    plan = plan_of_policy(POLICIES.get(name, {"name": "dense"}))[0]
    rounds = []
    for r in range(2):
        jitter = [1 + noise.gauss(0, 0.01) if noise else 1.0 for _ in range(6)]
        pre = {s: scale * secs[s][0] * jitter[2 * i] for i, s in enumerate(STAGES)}
        stage = {s: pre[s] + scale * secs[s][1] * jitter[2 * i + 1] for i, s in enumerate(STAGES)}
        rounds.append({"stage_s": stage, "prefill_s": pre, "first": r == 0})
    median = {s: sum(x["stage_s"][s] for x in rounds) / 2 for s in STAGES}
    return ItemResult(id=q["id"], answer="A", prediction="A", rule="cloze", correct=True,
                      latency_s=sum(median.values()), stage_latency_s=median, tokens=dict(tokens),
                      outputs={s: "" for s in STAGES}, executed_cost_fraction={s: _fraction(plan, s) for s in STAGES},
                      option_scores={"cloze": [0.0] * options}, prefill_s=dict(rounds[0]["prefill_s"]),
                      prefill_tokens={s: int(v) for s, v in prompts.items()}, timing_rounds=rounds)


def synthetic_records(noise: bool = False, n: int = 12, seed: int = 0):
    """One timed record per policy and benchmark; each record on a machine of its own speed (the
fit's costs are those of the records' geometric-mean speed)."""
    rng = random.Random(seed)
    jitter = random.Random(seed + 1) if noise else None
    records = []
    logs = [rng.uniform(-0.2, 0.2) for _ in range(len(BENCHES) * len(POLICIES))]
    scales = iter(math.exp(x - sum(logs) / len(logs)) for x in logs)  # typical speed: the costs' own
    for bench, options in BENCHES.items():
        for name, policy in POLICIES.items():
            scale = next(scales)
            method, dense = [], []
            for q in _questions(bench, n, seed):
                mine = {s: max(1, int(t * rng.uniform(0.5, 1.3))) for s, t in q["tokens"].items()}
                method.append(_side(name, q, mine, options, scale, jitter))
                dense.append(_side("dense", q, q["tokens"], options, scale, jitter))
            rec = build_record(model="synth-30l", benchmark=bench, split="eval", method=name, policy=policy,
                               answer_rule="cloze", items=method, command="synthetic", config={"reuse_kv": True},
                               dense_items=dense, dtype="float32", numerics="float32", device="cpu")
            records.append((f"results/synth/{bench}_{name}.json", rec))
    return records


def _fit(records, leave_out: str | None = None):
    recs = [r for _, r in records]
    facts, consts = model_facts(recs)["synth-30l"], prompt_constants(recs)
    data = [record_data(p, r, consts) for p, r in records]
    base = latency_fit.empty_fit(("synth-30l", "float32", "cpu", "x"), {"synth-30l": facts}, {"synth-30l": consts})
    blocks = blocks_for(base, data)
    return fit_blocks(base, [b for b in blocks if b.path != leave_out]), data


def dense_means_only(records):
    """The records as committed before records kept dense's rounds: dense only as geometric means."""
    return [(p, replace(r, timing={k: v for k, v in r.timing.items() if k != "dense_rounds"})) for p, r in records]


@pytest.fixture(scope="module")
def exact():
    return synthetic_records()


@pytest.fixture(scope="module", params=["dense rounds", "dense means"])
def both(request, exact):
    """The exact records with dense's per-item rounds, and without them (the committed records)."""
    return exact if request.param == "dense rounds" else dense_means_only(exact)


def test_model_facts_and_prompt_constants_are_read_from_records(exact):
    recs = [r for _, r in exact]
    assert model_facts(recs)["synth-30l"] == {"num_layers": LAYERS, "attn_share": pytest.approx(SHARE)}
    consts = prompt_constants(recs)["obqa"]
    assert consts["analyze"] == PROMPT["analyze"] and consts["summarize_extra"] == PROMPT["summarize_extra"]


def test_fit_recovers_the_costs_it_was_timed_with(both):
    fit, data = _fit(both)
    for name, true in TRUE.items():
        assert fit.params[name] == pytest.approx(true, rel=0.05, abs=2e-4), name
    for d in data:
        assert predict_record(fit, d) == pytest.approx(d.record.speedup, rel=0.005), d.path


@pytest.mark.parametrize("dense", ["dense rounds", "dense means"])
def test_a_held_out_record_is_predicted(dense):
    records = synthetic_records(noise=True, seed=3)
    records = records if dense == "dense rounds" else dense_means_only(records)
    for path, rec in records:
        if rec.method in ("stagewise", "skipdecode"):
            fit, data = _fit(records, leave_out=path)
            held = next(d for d in data if d.path == path)
            assert predict_record(fit, held) == pytest.approx(rec.speedup, rel=0.02), path


def test_predictions_from_untimed_items_match(exact):
    fit, data = _fit(exact)
    d = data[3]
    untimed = [ItemResult(**{**vars(it), "prefill_tokens": {}, "prefill_s": {}, "timing_rounds": []})
               for it in d.record.items]
    by_record = predict_record(fit, d)
    assert predict_items(fit, d.record.policy, d.record.items, d.record.benchmark) == pytest.approx(by_record)
    # without prompt lengths the benchmark's typical ones stand in: close, not equal
    assert predict_items(fit, d.record.policy, untimed, d.record.benchmark) == pytest.approx(by_record, rel=0.03)


@pytest.mark.parametrize("term", ["exit", "step_attn", "pre_ffn", "row_ffn"])
def test_a_fit_without_a_term_misses(exact, term, monkeypatch):
    """The synthetic data exercise each term: a model without it cannot match them."""
    rows = lf.item_rows

    def without(*args, **kwargs):
        out = rows(*args, **kwargs)
        out[..., FEATURES.index(term)] = 0.0
        return out

    monkeypatch.setattr("litestage_bench.records.latency_model.item_rows", without)
    fit, data = _fit(exact)
    worst = max(abs(predict_record(fit, d) / d.record.speedup - 1) for d in data)
    assert worst > 0.01


def test_plan_of_policy_reads_every_method():
    plan, exits = plan_of_policy(POLICIES["stagewise"])
    assert plan.for_stage("analyze").decode == SkipSet.of([3, 7, 9, 13], [10]) and exits == {"recall", "summarize"}
    assert reuse_flags(plan) == {"recall": False, "analyze": False, "summarize": False}
    layers, _ = plan_of_policy({"layers": [4, 5], "params": {"phase": "decode"}})
    assert not layers.for_stage("recall").prefill and layers.for_stage("recall").decode == SkipSet.layers([4, 5])
    assert reuse_flags(plan_of_policy(POLICIES["layers4"])[0]) == {"recall": False, "analyze": True, "summarize": True}
    sd = plan_of_policy(POLICIES["skipdecode"])[0].for_stage("recall")
    assert not sd.prefill and sd.skip_at(0) == SkipSet.layers([1]) and sd.skip_at(29) == SkipSet.layers(range(1, 7))
    ada = plan_of_policy({"skip": {"attn": [3], "ffn": []}, "decode_ffn": {"candidates": [1, 2], "threshold": 0.9}})[0]
    assert ada.for_stage("summarize").dynamic_ffn.candidates == {1, 2}
    spec = plan_of_policy({"lossless": True, "drafts": {"recall": {"skip": {"attn": [2]}, "k": 2}, "analyze": None}})[0]
    assert spec.for_stage("recall").draft.k == 2 and spec.for_stage("analyze").is_dense()
    with pytest.raises(UserError):
        plan_of_policy({"name": "mystery"})


def test_a_grid_records_policy_gives_the_plan_of_its_stages_only(tmp_path, monkeypatch):
    """The grid runs a method in its selected stages (`grid_stages`); a grid record made before that
    key held the selection in "stages", over LiteStage's sets, which its policy file keeps."""
    stagewise = POLICIES["stagewise"]
    restricted, exits = plan_of_policy({**stagewise, "grid_stages": ["analyze", "summarize"]})
    assert set(restricted.stages) == {"analyze", "summarize"} and exits == {"summarize"}
    assert restricted.for_stage("analyze") == plan_of_policy(stagewise)[0].for_stage("analyze")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.json").write_text(json.dumps({"stages": {s: {"skip": k} for s, k in stagewise["stages"].items()}}))
    old = {**stagewise, "name": "litestage", "policy": "p.json", "stages": list(STAGES)}
    assert plan_of_policy(old) == plan_of_policy(stagewise)
    layers = plan_of_policy({**POLICIES["layers4"], "stages": ["recall"]})[0]
    assert set(layers.stages) == {"recall"}
    with pytest.raises(UserError):
        plan_of_policy({**old, "policy": "missing.json"})


def test_a_timing_kept_by_copies_of_its_record_counts_once(tmp_path):
    """A record re-scored by another answer rule (studies.rescore) or re-timed at batch B beside its
    batch-1 timing (retime-throughput) keeps that timing: the fit reads it once, from the source."""
    from litestage_bench.records.latency_data import timed_records
    path, rec = synthetic_records(n=4)[1]
    write_record(tmp_path / "results" / path, rec)
    rescored = replace(rec, extra={**rec.extra, "rescored": {"from_rule": "x"}})
    write_record(tmp_path / "results" / "letter" / path, rescored)
    batch = replace(rec, timing={**rec.timing, "throughput": {"batch_size": 8}})
    write_record(tmp_path / "results" / "batch8" / path, batch)
    assert [p for p, _ in timed_records(tmp_path / "results")] == [f"results/{path}"]
    other = replace(rec, timing={**rec.timing, "speedup_rounds": [9.0, 9.0]})  # another measurement
    write_record(tmp_path / "results" / "again" / path, other)
    assert len(timed_records(tmp_path / "results")) == 2


def test_the_cli_writes_fits_and_a_table(tmp_path, capsys, monkeypatch):
    records = synthetic_records(noise=True, n=6, seed=5)
    for path, rec in records:
        write_record(tmp_path / path, rec)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "latency"
    assert latency_fit.main(["--out", "latency", "--results", "results"]) == 0
    fits = sorted(out.glob("fit_*.json"))
    assert len(fits) == 1 and str(tmp_path) not in fits[0].read_text()  # no machine paths
    fit = load_fit(fits[0])
    assert len(fit.records) == len(records) and all(r["held_out"] for r in fit.residuals.values())
    table = (out / "errors.md").read_text()
    assert "python -m litestage_bench.studies.latency_fit --out" in table and "| all | 12 |" in table
    capsys.readouterr()
    first = tmp_path / records[0][0]
    assert latency_fit.main(["--fit", str(fits[0]), "--predict", str(first)]) == 0
    assert "predicted" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["{not json", '{"kind": "other"}', "params-missing", "params-nan"])
def test_a_malformed_fit_file_is_one_line(tmp_path, capsys, text):
    good = {"kind": "litestage-bench latency fit", "version": 1, "group": {}, "num_layers": 30, "attn_share": None,
            "params": {f: 0.0 for f in FEATURES},
            "prompt": {"obqa": {"recall": 40, "analyze": 15, "summarize": 30, "summarize_extra": 6, "options": 4}}}
    fit_from_dict(good)  # the reference is fine
    if text == "params-missing":
        text = json.dumps({**good, "params": {"step": 0.1}})
    elif text == "params-nan":
        text = json.dumps({**good, "params": {**good["params"], "step": float("nan")}})
    path = tmp_path / "fit.json"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_fit(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value) and "fix:" in str(err.value)
    assert latency_fit.main(["--fit", str(path), "--predict", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
