"""The baselines: each method's plan on tiny random models, the calibration measurements against
independent computations on constructed cases, bad input, and that searches read only
calibration items."""
from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tiny_models import ARCHS, PROMPT, all_logits, assert_close, tiny_model
from tiny_reasoner import QUESTIONS, reasoner, tiny_llama

import baselines.common as common
from baselines.adaskip import adaskip_stage_plan, sublayer_ranking
from baselines.shortgpt import bi_ranking, block_influence
from baselines.skipdecode import schedule_plan, skip_counts
from baselines.sleb import NLLMeter, removal_order
from baselines.unified import unified_layers
from litestage_bench.cli import main
from litestage_bench.core.errors import UserError
from litestage_bench.engine import executor
from litestage_bench.engine.executor import CostMeter, SkipExecutor
from litestage_bench.engine.plan import PREFILL_STEP, STAGES, SkipSet, StagePlan
from litestage_bench.evaluation.benchmarks import Question
from litestage_bench.methods.calibration import StageTexts
from litestage_bench.methods.registry import SEARCHES, ModelFacts, load_plugins, make_method

load_plugins()


def facts(layers: int, name: str = "tiny") -> ModelFacts:
    return ModelFacts(name, layers, (1,) * layers, (1,) * layers)


def checked(name: str, policy: dict, layers: int):
    """The method's plan for a model of `layers` layers, validated as the runner does."""
    method = make_method(name, policy)
    plan = method.plan(facts(layers))
    for stage_plan in plan.stages.values():
        stage_plan.validate(layers)
    return method, plan


# ------------------------------------------------------------------------------ constructed models

HEADER = [3, 14, 15, 92, 65, 35]
BODIES = [[5, 17, 33, 2, 81, 40, 9], [64, 12, 7, 55], [21, 22, 23, 24, 25, 26, 27, 28, 29]]


def with_identity_layer(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The layer's attention and FFN add exactly zero to the residual stream (zeroed output maps)."""
    with torch.no_grad():
        model.model.layers[layer].self_attn.o_proj.weight.zero_()
        model.model.layers[layer].mlp.down_proj.weight.zero_()
    return model


def stage_texts(prompts: list[list[int]], outputs: list[list[int]] | None = None) -> StageTexts:
    """The same header + bodies in every stage (outputs: the generated ids after each prompt)."""
    outputs = outputs or [[] for _ in prompts]
    return StageTexts(HEADER, {s: [(f"q{i}", HEADER + p, o) for i, (p, o) in enumerate(zip(prompts, outputs))]
                               for s in STAGES})


def residual_streams(model: torch.nn.Module, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer, from transformers' own forward (no executor): the stream x entering the layer,
    h = x + attention, y = the layer's output; each [tokens, hidden]."""
    x, attn, y, hooks = {}, {}, {}, []
    for i, layer in enumerate(model.model.layers):
        def pre(mod, args, kwargs, i=i):
            x[i] = (args[0] if args else kwargs["hidden_states"])[0]

        def after_attn(mod, args, out, i=i):
            attn[i] = out[0][0]

        def after_layer(mod, args, out, i=i):
            y[i] = (out[0] if isinstance(out, tuple) else out)[0]
        hooks += [layer.register_forward_pre_hook(pre, with_kwargs=True),
                  layer.self_attn.register_forward_hook(after_attn), layer.register_forward_hook(after_layer)]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return [(x[i], x[i] + attn[i], y[i]) for i in range(len(model.model.layers))]


# ------------------------------------------------------------------------------ SkipDecode


@pytest.mark.parametrize("k", [1, 2, 5, 11])
@pytest.mark.parametrize("cap", [3, 16, 32, 48])
def test_skipdecode_schedule_is_monotone_keeps_layer_0_and_reaches_k(k, cap):
    plan = schedule_plan(k, cap)
    assert plan.skip_at(PREFILL_STEP) == SkipSet()  # prompts run dense
    counts = skip_counts(k, cap)
    assert len(counts) == cap - 1  # one entry per decode step
    assert counts[0] == 1 and counts[-1] == k
    assert all(a <= b for a, b in zip(counts, counts[1:]))
    previous = frozenset()
    for t, s in enumerate(counts):
        skip = plan.skip_at(t)
        assert skip == SkipSet.layers(range(1, s + 1))  # the lower layers 1..s(t)
        assert 0 not in skip.attn | skip.ffn
        assert previous <= skip.attn  # once skipped, skipped for every later token
        previous = skip.attn
    assert plan.scoring_set() == SkipSet.layers(range(1, k + 1))
    # no skipped layer is ever re-activated (fill_layers uses no executor state)
    assert SkipExecutor.fill_layers(None, plan, cap) == frozenset()


def test_skipdecode_follows_the_reference_ramp_and_min_skip():
    # 1 + ceil((k - 1) t / (T - 2)): the reference's shape over the stage's T - 1 decode steps
    assert skip_counts(4, 8) == [1, 2, 2, 3, 3, 4, 4]
    assert skip_counts(4, 8, min_skip=3) == [3, 4, 4, 4, 4, 4, 4]
    assert skip_counts(2, 8, min_skip=5) == [2] * 7  # min_skip above k: k throughout
    assert schedule_plan(0, 16).is_dense()


def test_skipdecode_method_maps_the_schedule_over_each_stage_cap():
    caps = {"recall": 10, "analyze": 6, "summarize": 4}
    method, plan = checked("skipdecode", {"k": 3, "max_new_tokens": caps}, 6)
    for stage, cap in caps.items():
        assert method.describe()["skip_counts"][stage] == skip_counts(3, cap)
        assert plan.for_stage(stage).skip_at(cap - 2) == SkipSet.layers([1, 2, 3])
    assert method.describe()["params"]["prefill"] == "dense"
    defaults = make_method("skipdecode", {"k": 2}).params["max_new_tokens"]
    assert defaults == {"recall": 48, "analyze": 32, "summarize": 16}


def test_skipdecode_generates_on_a_tiny_model():
    ex = SkipExecutor(tiny_model("llama", layers=6))
    _, plan = checked("skipdecode", {"k": 4, "max_new_tokens": {"recall": 8, "analyze": 8, "summarize": 8}}, 6)
    g = ex.generate([PROMPT, PROMPT[:7]], plan.for_stage("recall"), 8)
    assert all(len(t) == 8 for t in g.tokens)
    assert 0 < g.cost.fraction < 1


# ------------------------------------------------------------------------------ Unified, Early Exit


@pytest.mark.parametrize("layers", [4, 7, 12, 24, 30])
def test_unified_spreads_layers_evenly(layers):
    for k in range(1, layers - 1):
        chosen = unified_layers(layers, k)
        assert len(chosen) == k and chosen == sorted(set(chosen))
        assert chosen[0] >= 1 and chosen[-1] <= layers - 2  # first and last layer run
        # balanced (the centres of k equal bins of the inner layers): the runs of kept inner layers
        # between skipped ones differ by at most 1, the two end runs are about half a run each
        runs = [chosen[0] - 1] + [b - a - 1 for a, b in zip(chosen, chosen[1:])] + [layers - 2 - chosen[-1]]
        inner, ends = runs[1:-1], (runs[0], runs[-1])
        assert abs(ends[0] - ends[1]) <= 1
        if inner:
            assert max(inner) - min(inner) <= 1
            assert all((min(inner) - 1) / 2 <= e <= (max(inner) + 1) / 2 for e in ends)
    _, plan = checked("unified", {"k": 3}, 12)
    for stage in STAGES:  # stage-agnostic, prompts and generated tokens alike
        assert plan.for_stage(stage) == StagePlan.static(SkipSet.layers(unified_layers(12, 3)))


@pytest.mark.parametrize("arch", ARCHS)
def test_early_exit_skips_exactly_the_last_k_and_keeps_norm_and_head(arch):
    layers, k = 6, 2
    model = tiny_model(arch, layers=layers)
    method, plan = checked("early_exit", {"k": k}, layers)
    assert method.describe()["layers"] == [4, 5]
    stage = plan.for_stage("analyze")
    assert stage.prefill == stage.decode == SkipSet.layers([4, 5])
    # equal to the model truncated to its first L - k layers (final norm + LM head kept)
    short = copy.deepcopy(model)
    short.model.layers = torch.nn.ModuleList(list(short.model.layers)[:layers - k])
    short.config.num_hidden_layers = layers - k
    if getattr(short.config, "layer_types", None):
        short.config.layer_types = short.config.layer_types[:layers - k]
    with torch.no_grad():
        ref = short(torch.tensor([PROMPT])).logits[0]
    assert_close(all_logits(SkipExecutor(model), PROMPT, stage), ref)


def test_decode_phase_leaves_prompts_dense():
    _, plan = checked("unified", {"k": 2, "phase": "decode", "method": "unified"}, 8)
    stage = plan.for_stage("recall")
    assert stage.prefill == SkipSet() and stage.decode == SkipSet.layers(unified_layers(8, 2))


# ------------------------------------------------------------------------------ ShortGPT


def test_shortgpt_block_influence_matches_transformers_and_ranks_an_identity_layer_first():
    model = with_identity_layer(tiny_model("llama", layers=5, head_scale=1.0), 2)
    ex = SkipExecutor(model)
    texts = stage_texts(BODIES, [[60, 61], [62], [63, 64, 65]])
    bi = block_influence(ex, texts, batch_size=2)
    # independent: 1 - token-weighted mean cos(layer input, layer output) over the tokens after the header
    sums, tokens = torch.zeros(5, dtype=torch.float64), 0
    for stage in STAGES:
        for seq in texts.texts(stage):
            streams = residual_streams(model, seq)
            for j, (x, _, y) in enumerate(streams):
                sums[j] += F.cosine_similarity(x[len(HEADER):], y[len(HEADER):], dim=-1).double().sum()
            tokens += len(seq) - len(HEADER)
    assert bi == pytest.approx((1 - sums / tokens).tolist(), abs=1e-5)
    assert bi[2] == pytest.approx(0.0, abs=1e-6)
    assert bi_ranking(bi)[0] == 2
    assert bi_ranking([0.3, 0.1, 0.1, 0.5]) == [1, 2, 0, 3]  # ties: lower layer first


def _shortgpt_policy(**over) -> dict:
    policy = {"schema_version": 1, "method": "shortgpt", "model": "tiny", "num_layers": 6,
              "block_influence": [0.9, 0.2, 0.05, 0.3, 0.1, 0.8], "ranking": [2, 4, 1, 3, 5, 0]}
    return {**policy, **over}


def test_shortgpt_removes_the_k_lowest():
    method, plan = checked("shortgpt", {**_shortgpt_policy(), "k": 3}, 6)
    assert plan.for_stage("summarize") == StagePlan.static(SkipSet.layers([1, 2, 4]))
    assert method.describe()["layers"] == [1, 2, 4] and method.describe()["name"] == "shortgpt-k3"


# ------------------------------------------------------------------------------ SLEB


def _nll_without(model: torch.nn.Module, drop: list[int], seqs: list[list[int]]) -> float:
    """Next-token NLL per token after the header of a copy with the layers deleted (transformers' forward)."""
    pruned = copy.deepcopy(model)
    pruned.model.layers = torch.nn.ModuleList([m for i, m in enumerate(pruned.model.layers) if i not in drop])
    for i, layer in enumerate(pruned.model.layers):
        layer.self_attn.layer_idx = i
    pruned.config.num_hidden_layers = len(pruned.model.layers)
    total, count = 0.0, 0
    for seq in seqs:
        with torch.no_grad():
            logits = pruned(torch.tensor([seq])).logits[0].double()
        n = len(HEADER)
        # positions n .. end-2 predict tokens n+1 .. end-1 (the tokens after the header, from the second on)
        total += float(F.cross_entropy(logits[n:-1], torch.tensor(seq[n + 1:]), reduction="sum"))
        count += len(seq) - n - 1
    return total / count


@pytest.fixture(scope="module")
def sleb_case():
    """A 6-layer model whose layer 3 is an exact identity; calibration text = its own greedy output."""
    model = with_identity_layer(tiny_model("llama", layers=6), 3)
    ex = SkipExecutor(model)
    outputs = ex.generate([HEADER + b for b in BODIES], StagePlan(), 6).tokens
    texts = stage_texts(BODIES, outputs)
    return model, ex, texts


def test_sleb_nll_matches_transformers_with_the_blocks_deleted(sleb_case):
    model, ex, texts = sleb_case
    seqs = [t for s in STAGES for t in texts.texts(s)]
    meter = NLLMeter(ex, HEADER, seqs, batch_size=2)
    for drop in ([], [1], [2, 4]):
        assert meter.nll(SkipSet.layers(drop)) == pytest.approx(_nll_without(model, drop, seqs), abs=1e-5)


def test_sleb_removes_the_harmless_block_first_and_rescores_every_round(sleb_case):
    model, ex, texts = sleb_case
    seqs = [t for s in STAGES for t in texts.texts(s)]
    meter = NLLMeter(ex, HEADER, seqs, batch_size=2)
    dense = meter.nll(SkipSet())
    found = removal_order(meter, 6, 3, log=lambda m: None)
    order = found["removal_order"]
    assert order[0] == 3  # removing the identity block changes nothing: nothing else is as harmless
    assert found["nll"][0] == pytest.approx(dense, abs=1e-9)
    assert len(order) == 3 and 0 not in order and 5 not in order  # barriers: first and last block stay
    for r, scores in enumerate(found["rounds"]):
        # each round scores the remaining inner blocks in the model pruned so far, and removes the argmin
        alive = [j for j in range(1, 5) if j not in order[:r]]
        assert sorted(int(j) for j in scores) == alive
        assert scores[str(order[r])] == min(scores.values())
        for j in alive:
            assert scores[str(j)] == pytest.approx(meter.nll(SkipSet.layers(order[:r] + [j])), abs=1e-12)
    assert found["perplexity"] == pytest.approx([math.exp(x) for x in found["nll"]])


def test_sleb_continuing_an_earlier_order_equals_searching_from_scratch(sleb_case):
    model, ex, texts = sleb_case
    meter = NLLMeter(ex, HEADER, [t for s in STAGES for t in texts.texts(s)], batch_size=2)
    whole = removal_order(meter, 6, 3, log=lambda m: None)
    first = removal_order(meter, 6, 1, log=lambda m: None)
    passes = meter.passes
    continued = removal_order(meter, 6, 3, log=lambda m: None, prior=json.loads(json.dumps(first)))
    assert continued == whole
    assert meter.passes - passes == 3 + 2  # rounds 2 and 3 only: 3 then 2 candidates


def test_sleb_method_takes_the_first_k_of_the_order():
    policy = {"schema_version": 1, "method": "sleb", "model": "tiny", "num_layers": 6, "removal_order": [3, 1, 4],
              "perplexity": [10.0, 11.0, 15.0]}
    method, plan = checked("sleb", {**policy, "k": 2}, 6)
    assert plan.for_stage("recall") == StagePlan.static(SkipSet.layers([1, 3]))
    assert method.describe()["calibration_perplexity"] == 11.0
    with pytest.raises(UserError, match="first 3 removals"):
        make_method("sleb", {**policy, "k": 4})


# ------------------------------------------------------------------------------ AdaSkip


def test_adaskip_scale_factors_are_the_measured_norm_ratios():
    model = tiny_model("llama", layers=4, head_scale=1.0)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()  # an identity attention: cos 1, ratio 1
    ex = SkipExecutor(model)
    texts = stage_texts(BODIES)
    prompts = [p for s in STAGES for p in texts.prompts(s)]
    stats = common.SublayerStats(4)
    common.dense_prefills(ex, HEADER, prompts, stats, batch_size=2)
    cos, ratio = stats.means("cos"), stats.means("ratio")
    # independent: transformers' forward with hooks; per prompt the mean over tokens after the header
    want = {(m, k): torch.zeros(4, dtype=torch.float64) for m in ("cos", "ratio") for k in ("attn", "ffn")}
    n = len(HEADER)
    for seq in prompts:
        for j, (x, h, y) in enumerate(residual_streams(model, seq)):
            for kind, (a, b) in (("attn", (x, h)), ("ffn", (h, y))):
                a, b = a[n:].double(), b[n:].double()
                want["cos", kind][j] += F.cosine_similarity(a, b, dim=-1).mean() / len(prompts)
                want["ratio", kind][j] += (b.norm(dim=-1) / a.norm(dim=-1)).mean() / len(prompts)
    for kind in ("attn", "ffn"):
        assert cos[kind] == pytest.approx(want["cos", kind].tolist(), abs=1e-5)
        assert ratio[kind] == pytest.approx(want["ratio", kind].tolist(), abs=1e-5)
    assert cos["attn"][1] == pytest.approx(1.0, abs=1e-6) and ratio["attn"][1] == pytest.approx(1.0, abs=1e-6)

    ranking = sublayer_ranking(cos)
    assert ranking[0] == ("attn", 1)
    policy = {"schema_version": 1, "method": "adaskip", "model": "tiny", "num_layers": 4, "similarity": cos,
              "norm_ratio": ratio, "ranking": [list(u) for u in ranking]}
    method, plan = checked("adaskip", {**policy, "k": 3}, 4)
    stage = plan.for_stage("recall")
    skipped = ranking[:3]
    assert stage.prefill == stage.decode == SkipSet.of([j for kind, j in skipped if kind == "attn"],
                                                       [j for kind, j in skipped if kind == "ffn"])
    for kind, j in skipped:
        scale = stage.attn_scale if kind == "attn" else stage.ffn_scale
        assert scale[j] == pytest.approx(want["ratio", kind][j].item(), abs=1e-5)
    # decode extension: every other FFN is a candidate, threshold = the 3rd largest similarity
    dyn = stage.dynamic_ffn
    assert dyn.candidates == frozenset(range(4)) - stage.decode.ffn and dyn.warmup_steps == 20
    assert dyn.threshold == sorted(cos["attn"] + cos["ffn"], reverse=True)[2]
    assert all(stage.ffn_scale[j] == ratio["ffn"][j] for j in dyn.candidates)
    assert all(plan.for_stage(s) == stage for s in STAGES)
    # the plan runs: the skipped sub-layers' replacements and the per-sequence FFN rule
    assert len(ex.generate([PROMPT], stage, 6).tokens[0]) == 6
    # a finished row fed masked padding costs nothing, before and after the warm-up decision
    cache = ex.new_cache(2)
    ex.forward(cache, torch.tensor([PROMPT, PROMPT]), torch.ones(2, len(PROMPT), dtype=torch.bool), stage.prefill,
               stage, CostMeter())
    state = executor._DynamicState(dyn, torch.zeros(2, 4))
    for decided in (False, True):
        if decided:
            state.skip_rows = torch.zeros(2, 4, dtype=torch.bool)
        one_live, both = CostMeter(), CostMeter()
        for meter, live in ((one_live, [True, False]), (both, [True, True])):
            ex.forward(cache, torch.tensor([[5], [0]]), torch.tensor([live]).T, stage.decode, stage, meter,
                       dynamic=state)
        assert 0 < one_live.fraction <= 1 and one_live.fraction == pytest.approx(both.fraction)


def test_adaskip_options():
    cos = {"attn": [0.5, 0.9, 0.6], "ffn": [0.7, 0.8, 0.95]}
    ratio = {"attn": [1.1, 1.2, 1.3], "ffn": [1.4, 1.5, 1.6]}
    ranking = sublayer_ranking(cos)
    assert ranking[:3] == [("ffn", 2), ("attn", 1), ("ffn", 1)]
    plain = adaskip_stage_plan(ranking, cos, ratio, 2, phase="decode", decode_ffn=False, scale=False)
    assert plain == StagePlan(decode=SkipSet.of([1], [2]))
    assert adaskip_stage_plan(ranking, cos, ratio, 0).is_dense()


# ------------------------------------------------------------------------------ every method: plans and bad input

ADASKIP_POLICY = {"schema_version": 1, "method": "adaskip", "model": "tiny", "num_layers": 4,
                  "similarity": {"attn": [0.1, 0.9, 0.2, 0.3], "ffn": [0.4, 0.5, 0.95, 0.6]},
                  "norm_ratio": {"attn": [1.0] * 4, "ffn": [1.0] * 4},
                  "ranking": [["ffn", 2], ["attn", 1], ["ffn", 3], ["ffn", 1], ["ffn", 0], ["attn", 3], ["attn", 2],
                              ["attn", 0]]}
SHORTGPT_POLICY = {"schema_version": 1, "method": "shortgpt", "model": "tiny", "num_layers": 4,
                   "block_influence": [0.9, 0.1, 0.2, 0.8], "ranking": [1, 2, 3, 0]}
SLEB_POLICY = {"schema_version": 1, "method": "sleb", "model": "tiny", "num_layers": 4, "removal_order": [2, 1],
               "perplexity": [5.0, 6.0]}
POLICIES = {"adaskip": ADASKIP_POLICY, "shortgpt": SHORTGPT_POLICY, "sleb": SLEB_POLICY,
            "unified": {}, "early_exit": {}, "skipdecode": {}}
MAX_K = {"adaskip": 8, "shortgpt": 3, "sleb": 2, "unified": 2, "early_exit": 3, "skipdecode": 3}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_k_gives_a_valid_plan_and_k_beyond_the_range_is_refused(name):
    for k in range(MAX_K[name] + 1):
        method, plan = checked(name, {**POLICIES[name], "k": k}, 4)
        if k == 0:
            assert not plan.stages
        else:
            assert set(plan.stages) == set(STAGES)
        assert method.describe()["k"] == k
        json.dumps(method.describe())  # recorded in the result file
    with pytest.raises(UserError, match="out of range|removals"):
        checked(name, {**POLICIES[name], "k": MAX_K[name] + 1}, 4)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_missing_or_bad_k_is_a_user_error(name):
    with pytest.raises(UserError, match="needs --k"):
        make_method(name, dict(POLICIES[name]) or None)
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(UserError, match="whole number"):
            make_method(name, {**POLICIES[name], "k": bad})


@pytest.mark.parametrize("name", ["adaskip", "shortgpt", "sleb"])
def test_search_policies_are_checked(name):
    policy = POLICIES[name]
    with pytest.raises(UserError, match="needs a policy file"):
        make_method(name, {"k": 1})
    with pytest.raises(UserError, match="calibrated on model"):
        make_method(name, {**policy, "k": 1}).check_model("other-model")
    with pytest.raises(UserError, match="is for 4 layers, the model has 6"):
        make_method(name, {**policy, "k": 1}).plan(facts(6, "tiny"))
    other = "sleb" if name != "sleb" else "shortgpt"
    with pytest.raises(UserError, match=f"not a {name} policy"):
        make_method(name, {**POLICIES[other], "k": 1})
    with pytest.raises(UserError, match=f"not a {name} policy"):
        make_method(name, {"schema_version": 1, "method": "litestage", "model": "tiny", "k": 1})
    with pytest.raises(UserError, match="schema"):
        make_method(name, {**policy, "schema_version": 99, "k": 1})


def test_other_bad_input():
    with pytest.raises(UserError, match="policy of method 'litestage'"):
        make_method("unified", {"method": "litestage", "stages": {}, "k": 2})
    with pytest.raises(UserError, match="phase"):
        make_method("early_exit", {"method": "early_exit", "phase": "prefill", "k": 1})
    with pytest.raises(UserError, match="unknown unified option"):
        make_method("unified", {"method": "unified", "phse": "decode", "k": 2})
    with pytest.raises(UserError, match="max_new_tokens"):
        make_method("skipdecode", {"k": 1, "max_new_tokens": {"recall": 4}})
    with pytest.raises(UserError, match="ranking"):
        make_method("shortgpt", {**SHORTGPT_POLICY, "ranking": [1, 1, 2, 3], "k": 1})
    with pytest.raises(UserError, match="malformed"):
        make_method("adaskip", {**ADASKIP_POLICY, "norm_ratio": None, "k": 1})


def test_cli_hands_k_and_the_stage_caps_to_the_method():
    from litestage_bench.cli import _method_options
    args = SimpleNamespace(method="skipdecode", k=3, max_new_tokens="10,6,4")
    policy = _method_options(args, None)
    assert policy == {"k": 3, "max_new_tokens": {"recall": 10, "analyze": 6, "summarize": 4}}
    assert make_method("skipdecode", policy).params["max_new_tokens"]["analyze"] == 6
    # other methods get k only; a policy file's content is kept
    assert _method_options(SimpleNamespace(method="shortgpt", k=2, max_new_tokens="10,6,4"),
                           {"path": "p.json", "method": "shortgpt"}) == {"path": "p.json", "method": "shortgpt", "k": 2}
    assert _method_options(SimpleNamespace(method="dense", k=None, max_new_tokens=None), None) is None


def test_cli_passes_k_and_refuses_it_where_it_means_nothing(capsys, tmp_path):
    out = str(tmp_path / "r.json")
    cases = [(["--method", "unified"], "needs --k"), (["--method", "dense", "--k", "2"], "takes no --k"),
             (["--method", "shortgpt", "--k", "2"], "needs a policy file")]
    for args, needle in cases:
        assert main(["run", "--bench", "obqa", "--limit", "1", "--out", out, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert needle in err and "fix:" in err
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({**SHORTGPT_POLICY, "model": "smollm2-135m"}))
    assert main(["run", "--bench", "obqa", "--limit", "1", "--out", out, "--method", "shortgpt", "--policy",
                 str(policy), "--k", "9"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------------------ searches


@pytest.mark.parametrize("name", ["adaskip", "shortgpt", "sleb"])
def test_search_reads_only_calibration_items_and_writes_a_usable_policy(name, tokenizer, monkeypatch, tmp_path):
    model = tiny_llama(tokenizer)
    calib = [Question(f"c{i}", q.stem + f" (variant {i})", q.options, q.labels, q.answer)
             for i, q in enumerate(QUESTIONS * 2)]
    evaluation = [Question("e1", "Which gas do plants take in?", ("oxygen", "carbon dioxide"), ("A", "B"), "B")]
    splits = {"calib": calib, "eval": evaluation}
    read = []

    def fake_split(bench, split, **kw):
        read.append(split)
        return list(splits[split][:kw.get("limit")])
    monkeypatch.setattr(common, "load_split", fake_split)
    r = reasoner(model, tokenizer)
    seen: set[str] = set()
    solve_batch = r.solve_batch

    def spy_batch(qs, *a, **kw):
        seen.update(q.id for q in qs)
        return solve_batch(qs, *a, **kw)
    monkeypatch.setattr(r, "solve_batch", spy_batch)
    monkeypatch.setattr(r, "solve", lambda *a, **kw: pytest.fail("a search needs no batch-1 run"))
    session = SimpleNamespace(reasoner=lambda bench, cfg, data_dir=None: r, executor=r.ex,
                              loaded=SimpleNamespace(name="tiny", source="test", dtype="float32"))
    args = SimpleNamespace(limit=4, batch_size=2, seed=0, data_dir=None, max_skip=2)
    policy = SEARCHES[name](session, "obqa", args, r.cfg, "test", lambda m: None)
    assert seen == {q.id for q in calib[:4]} and read == ["calib", "eval"]
    assert policy["calibration"]["ids"] == [q.id for q in calib[:4]]
    assert (policy["method"], policy["model"], policy["num_layers"]) == (name, "tiny", 4)
    if name == "sleb":
        assert len(policy["removal_order"]) == 2 and len(policy["perplexity"]) == 2
    method = make_method(name, {**json.loads(json.dumps(policy)), "k": 2})
    plan = method.plan(facts(4))
    for stage_plan in plan.stages.values():
        stage_plan.validate(4)
    assert r.solve_batch(QUESTIONS[:1], plan)  # the plan runs in the reasoner
    if name == "sleb":  # a larger search into the same file continues the earlier removal order
        out = tmp_path / "sleb.json"
        first = SEARCHES[name](session, "obqa", SimpleNamespace(**{**vars(args), "max_skip": 1, "out": str(out)}),
                               r.cfg, "test", lambda m: None)
        out.write_text(json.dumps(first))
        logs = []
        more = SEARCHES[name](session, "obqa", SimpleNamespace(**{**vars(args), "out": str(out)}), r.cfg, "test",
                              logs.append)
        assert any("continuing" in m for m in logs)
        assert more["removal_order"] == policy["removal_order"] and more["rounds"] == policy["rounds"]
        assert more["continued_from"]["removals"] == 1
        out.write_text(json.dumps({**first, "nll": [first["nll"][0] + 0.5]}))  # not this search's numbers
        logs.clear()
        again = SEARCHES[name](session, "obqa", SimpleNamespace(**{**vars(args), "out": str(out)}), r.cfg, "test",
                               logs.append)
        assert "continued_from" not in again and any("from scratch" in m for m in logs)
        assert again["removal_order"] == policy["removal_order"]
    # an overlap between calibration and evaluation is refused
    splits["eval"] = calib[:1]
    with pytest.raises(UserError, match="also evaluation"):
        SEARCHES[name](session, "obqa", args, r.cfg, "test", lambda m: None)
