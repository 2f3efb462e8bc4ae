"""The harm profile without a search (`python -m litestage_bench.studies.harm_profile`): calibration items
only, every sub-layer skipped alone, joint vs summed harm, and the summary table."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from tiny_reasoner import calibration_splits, reasoner, split_loader

from litestage_bench.studies import harm_profile


def test_profile_reads_only_calibration_items_and_adds_up(model, tokenizer, monkeypatch, tmp_path):
    splits = calibration_splits()
    calib = splits["calib"]
    monkeypatch.setattr(harm_profile, "load_split", split_loader(splits))
    r = reasoner(model, tokenizer)
    seen: set[str] = set()
    solve_batch = r.solve_batch
    monkeypatch.setattr(r, "solve_batch", lambda qs, *a, **kw: (seen.update(q.id for q in qs), solve_batch(qs, *a, **kw))[1])
    session = SimpleNamespace(reasoner=lambda bench, cfg, data_dir=None: r, executor=r.ex,
                              loaded=SimpleNamespace(name="tiny", dtype="float32", spec=None))
    out = harm_profile.measure(session, "obqa", 3, [2, 4, 99], batch_size=2, log=lambda m: None)
    assert seen == {q.id for q in calib[:3]}
    assert out["calibration"]["ids"] == [q.id for q in calib[:3]]
    units = [tuple(p["unit"]) for p in out["profile"]]
    assert len(units) == 2 * r.ex.num_layers and [tuple(u) for u in out["ranking"]] == units
    assert all(p["kl"] >= 0 for p in out["profile"]) and -1 <= out["spearman_dissimilarity_vs_kl"] <= 1
    assert [j["top"] for j in out["joint"]] == [2, 4]  # sizes beyond the unit count are dropped
    kl = [p["kl"] for p in out["profile"]]
    assert out["joint"][1]["sum_single_kl"] == pytest.approx(sum(kl[:4]))
    assert out["joint"][0]["joint_kl"] > 0
    assert out["cost"]["harm_passes"] == len(units) + 2
    recall_only = harm_profile.measure(session, "obqa", 3, [], stages=("recall",), batch_size=2, log=lambda m: None)
    assert 0 < recall_only["tokens"] < out["tokens"] and recall_only["harm_stages"] == ["recall"]
    (tmp_path / "tiny_obqa.json").write_text(json.dumps({**out, "command": "cmd"}))
    md = harm_profile.write_summary(tmp_path).read_text()
    assert "| tiny " in md and "`cmd`" in md


@pytest.mark.parametrize("argv, match", [(["--bench", "obqa"], "--model is required"),
                                         (["--model", "smollm2-135m", "--joint", "2,x"], "not a list of whole numbers"),
                                         (["--model", "smollm2-135m", "--items", "0"], "must be >= 1"),
                                         (["--model", "smollm2-135m", "--stages", "recall,plan"], "not a list of stages")])
def test_bad_arguments_get_one_line(argv, match, capsys):
    assert harm_profile.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
