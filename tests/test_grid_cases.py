"""The grid's selection: options -> cases, defaults of the main job and of the smoke, one-line
errors for bad options."""
from __future__ import annotations

import pytest

from litestage_bench.core.errors import UserError
from litestage_bench.engine.plan import STAGES
from litestage_bench.grid.cases import DEFAULT_POINTS, SWEEP_POINTS, GridCase, selection_from_options

DEFAULTS = {"--models": None, "--benches": None, "--methods": None, "--points": None, "--stages": "all",
            "--limit": None, "--timed": None, "--batch-size": 8, "--dtype": None, "--numerics": None, "--device": "cpu",
            "--policy-dir": "results/policies", "--no-search": False, "--search-limit": None, "--rounds": None,
            "--timing": "latency", "--chunks": None, "--chunk-rounds": None}


def select(main_job: bool = True, **options):
    opts = {**DEFAULTS, **{f"--{k.replace('_', '-')}": v for k, v in options.items()}}
    return selection_from_options(opts.__getitem__, main_job)


def test_main_job_defaults(tmp_path):
    sel = select(policy_dir=str(tmp_path))
    # the main job a newcomer waits for: every method on one benchmark, one batch, 4 timed in 1 round (an even count: each side first on half)
    assert (sel.models, sel.benches, sel.limit, sel.timed) == (["smollm2-135m"], ["obqa"], 4, 4)
    assert sel.rounds == 1
    assert select(policy_dir=str(tmp_path), benches="all").benches == ["obqa", "csqa", "strategyqa"]
    assert sel.methods[0] == "dense" and "plan" not in sel.methods
    assert {"litestage", "selfspec", "litestage-spec"} <= set(sel.methods)
    cases = select(policy_dir=str(tmp_path), benches="all").cases()
    first = [c for c in cases if c.bench == "obqa"]
    assert first[0] == GridCase("smollm2-135m", "obqa")  # dense first in its group
    assert [c.k for c in first if c.method == "unified"] == list(DEFAULT_POINTS["unified"])
    assert [c.point for c in first if c.method == "litestage"] == ["policy"]
    # no policies in an empty folder: the search methods are missing (searched first unless --no-search)
    assert {c.method for c in cases if sel.missing_policy(c)} == {"adaskip", "litestage", "shortgpt", "sleb", "selfspec",
                                                                   "litestage-spec"}
    (tmp_path / "smollm2-135m_obqa_litestage.json").write_text("{}")
    assert not sel.missing_policy(GridCase("smollm2-135m", "obqa", "litestage"))


def test_smoke_defaults():
    sel = select(main_job=False)
    assert (sel.limit, sel.timed, sel.rounds) == (2, 1, 2)
    assert [(c.bench, c.method, c.k) for c in sel.cases()] == [
        (b, m, k) for b in ("obqa", "csqa", "strategyqa") for m, k in (("dense", None), ("unified", 4))]


def test_points_stages_and_ids():
    sel = select(models="smollm2-135m,Qwen/Qwen2.5-0.5B-Instruct", benches="obqa", methods="unified,early_exit",
                 points="unified=2,8;early_exit=1", stages="all;analyze;recall,summarize", limit=0, timed=0)
    assert (sel.limit, sel.timed) == (None, None)  # whole split, all timed
    cases = sel.cases()
    assert len(cases) == 2 * (1 + 3 * 3)  # per model: dense + 3 points x 3 stage selections
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids)
    assert "smollm2-135m-obqa-unified-k8-st-A" in ids and "smollm2-135m-obqa-early_exit-k1-st-R+S" in ids
    assert "Qwen_Qwen2.5-0.5B-Instruct-obqa-dense" in ids
    assert {c.group for c in cases} == {"smollm2-135m-obqa", "Qwen_Qwen2.5-0.5B-Instruct-obqa"}
    assert GridCase("m", "obqa", "unified", 2).stages == STAGES
    assert sorted(cases, key=GridCase.sort_key) == sorted(reversed(cases), key=GridCase.sort_key)
    assert GridCase.from_dict(cases[3].to_dict()) == cases[3]


def test_sweep_points():
    sel = select(methods="unified,adaskip", points="sweep;unified=3")
    assert sel.points == {"unified": (3,), "adaskip": SWEEP_POINTS["adaskip"]}
    assert select(methods="unified").points == {"unified": DEFAULT_POINTS["unified"]}


@pytest.mark.parametrize("options, message", [
    ({"models": "no-such-model"}, "unknown model 'no-such-model'"),
    ({"benches": "mmlu"}, "mmlu"),
    ({"methods": "dense,nope"}, "unknown method 'nope'"),
    ({"methods": "plan"}, "cannot run 'plan'"),
    ({"points": "unified"}, "has no '='"),
    ({"points": "dense=2"}, "takes no k"),
    ({"points": "unified=two"}, "not whole numbers"),
    ({"points": "unified=-1"}, ">= 0"),
    ({"methods": "dense", "points": "unified=2"}, "not selected"),
    ({"stages": "recall;think"}, "unknown stage 'think'"),
    ({"limit": -3}, "--limit -3"),
    ({"batch_size": 0}, "--batch-size 0"),
    ({"device": "tpu"}, "unknown device"),
    ({"dtype": "float8"}, "float8"),
    ({"numerics": "int3"}, "unknown numerics 'int3'"),
    ({"dtype": "bfloat16", "numerics": "bf16-matmul"}, "needs --dtype float32"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(UserError) as err:
        select(**options)
    assert message in str(err.value) and "fix:" in str(err.value) and "\n" not in str(err.value)
