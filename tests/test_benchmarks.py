"""Tests for litestage_bench.evaluation.benchmarks and litestage_bench.evaluation.demos (real data, offline)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from litestage_bench.core.errors import UserError
from litestage_bench.evaluation.benchmarks import (BENCHMARKS, DATA_DIR_ENV, SPLITS, STRATEGYQA_EVAL_SIZE, Question,
                                                   load_split, normalize_stem, split_ids)
from litestage_bench.evaluation.demos import load_demos, parse_options


def _data_dir() -> Path | None:
    here = Path(__file__).resolve().parents[2] / "shared" / "data"
    if here.is_dir():
        return here
    env = os.environ.get(DATA_DIR_ENV)
    if env and Path(env).is_dir():
        return Path(env)
    return None


DATA = _data_dir()
needs_data = pytest.mark.skipif(
    DATA is None,
    reason=f"benchmark data folder not found (../shared/data or ${DATA_DIR_ENV})",
)

EXPECTED = {
    ("obqa", "eval"): 500,
    ("obqa", "calib"): 500,
    ("csqa", "eval"): 1221,
    ("csqa", "calib"): 9741,
    ("strategyqa", "eval"): 229,
    ("strategyqa", "calib"): 2061,
}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    # tests pass data_dir explicitly unless they test the env var
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# ---------------------------------------------------------------- counts and content


@needs_data
@pytest.mark.parametrize("bench,split", sorted(EXPECTED))
def test_counts(bench, split):
    qs = load_split(bench, split, data_dir=DATA)
    assert len(qs) == EXPECTED[(bench, split)]
    assert len({q.id for q in qs}) == len(qs)


@needs_data
def test_strategyqa_total_and_eval_size():
    ev = load_split("strategyqa", "eval", data_dir=DATA)
    ca = load_split("strategyqa", "calib", data_dir=DATA)
    assert len(ev) + len(ca) == 2290
    assert len(ev) == STRATEGYQA_EVAL_SIZE == 229
    raw = json.loads((DATA / "strategyqa" / "strategyqa_train.json").read_text())
    assert {q.id for q in ev} | {q.id for q in ca} == {r["qid"] for r in raw}
    truth = {r["qid"]: r["answer"] for r in raw}
    for q in ev + ca:
        assert q.options == ("yes", "no") and q.labels == ("A", "B")
        assert q.answer == ("A" if truth[q.id] else "B")


@needs_data
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_eval_calib_disjoint_by_id_and_stem(bench):
    ev = load_split(bench, "eval", data_dir=DATA)
    ca = load_split(bench, "calib", data_dir=DATA)
    assert not ({q.id for q in ev} & {q.id for q in ca})
    assert not ({q.stem for q in ev} & {q.stem for q in ca})
    assert not ({normalize_stem(q.stem) for q in ev} & {normalize_stem(q.stem) for q in ca})
    assert split_ids(bench, "eval", DATA).isdisjoint(split_ids(bench, "calib", DATA))


@needs_data
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_answers_in_labels(bench):
    for split in SPLITS:
        for q in load_split(bench, split, data_dir=DATA):
            assert isinstance(q, Question)
            assert q.answer in q.labels
            assert len(q.options) == len(q.labels) >= 2
            assert q.labels[q.answer_index] == q.answer
            assert q.stem.strip()


@needs_data
def test_obqa_first_item_matches_file():
    first = json.loads((DATA / "obqa" / "test.jsonl").read_text().splitlines()[0])
    q = load_split("obqa", "eval", data_dir=DATA)[0]
    assert q.id == first["id"] and q.answer == first["answerKey"]
    assert q.options == tuple(c["text"] for c in first["question"]["choices"])


# ---------------------------------------------------------------- determinism


@needs_data
def test_split_is_deterministic():
    a = load_split("strategyqa", "eval", data_dir=DATA)
    b = load_split("strategyqa", "eval", data_dir=DATA, seed=123)  # seed must not move the split
    assert [q.id for q in a] == [q.id for q in b]


@needs_data
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_limit_is_deterministic_and_nested(bench):
    full = load_split(bench, "eval", data_dir=DATA)
    a100 = load_split(bench, "eval", limit=100, data_dir=DATA)
    again = load_split(bench, "eval", limit=100, data_dir=DATA)
    a200 = load_split(bench, "eval", limit=200, data_dir=DATA)
    other = load_split(bench, "eval", limit=100, data_dir=DATA, seed=1)
    assert len(a100) == 100 and len(a200) == 200
    assert [q.id for q in a100] == [q.id for q in again]
    assert {q.id for q in a100} <= {q.id for q in a200}
    assert {q.id for q in a100} != {q.id for q in other}
    # original file order is kept
    pos = {q.id: i for i, q in enumerate(full)}
    assert [pos[q.id] for q in a100] == sorted(pos[q.id] for q in a100)


@needs_data
def test_limit_larger_than_split_and_none():
    full = load_split("obqa", "eval", data_dir=DATA)
    assert load_split("obqa", "eval", limit=10_000, data_dir=DATA) == full
    assert load_split("obqa", "eval", limit=None, data_dir=DATA) == full


@needs_data
def test_env_var_is_used(monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(DATA))
    assert len(load_split("obqa", "eval")) == 500


# ---------------------------------------------------------------- errors


def test_unknown_bench():
    with pytest.raises(UserError) as ei:
        load_split("gsm8k", data_dir="/nonexistent")
    msg = str(ei.value)
    assert "gsm8k" in msg and all(b in msg for b in BENCHMARKS)


def test_unknown_split(tmp_path):
    with pytest.raises(UserError) as ei:
        load_split("obqa", "test", data_dir=tmp_path)
    assert "'test'" in str(ei.value) and "calib" in str(ei.value)


@pytest.mark.parametrize("limit", [0, -3])
def test_bad_limit(tmp_path, limit):
    with pytest.raises(UserError, match="limit"):
        load_split("obqa", limit=limit, data_dir=tmp_path)


def test_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError) as ei:
        load_split("obqa", data_dir=missing)
    assert str(missing) in str(ei.value) and DATA_DIR_ENV in str(ei.value)


def test_missing_dir_from_env(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.setenv(DATA_DIR_ENV, str(missing))
    with pytest.raises(UserError) as ei:
        load_split("csqa")
    assert str(missing) in str(ei.value) and DATA_DIR_ENV in str(ei.value)


@pytest.mark.parametrize("bench,rel", [
    ("obqa", "obqa/test.jsonl"),
    ("csqa", "csqa/dev_rand_split.jsonl"),
    ("strategyqa", "strategyqa/strategyqa_train.json"),
])
def test_missing_file(tmp_path, bench, rel):
    with pytest.raises(UserError) as ei:
        load_split(bench, "eval", data_dir=tmp_path)
    assert str(tmp_path / rel) in str(ei.value) and DATA_DIR_ENV in str(ei.value)


def _good_obqa_line(i: int, key: str = "A") -> str:
    return json.dumps({
        "id": f"q{i}",
        "question": {"stem": f"question {i}?", "choices": [
            {"text": t, "label": lab} for t, lab in zip("wxyz", "ABCD")]},
        "answerKey": key,
    })


@pytest.mark.parametrize("bad,why", [
    ("{not json", "bad JSON"),
    (json.dumps({"id": "q9", "answerKey": "A"}), "missing key"),
    (_good_obqa_line(9, key="F"), "answerKey"),
])
def test_malformed_line(tmp_path, bad, why):
    d = tmp_path / "obqa"
    d.mkdir()
    path = d / "test.jsonl"
    path.write_text("\n".join([_good_obqa_line(1), _good_obqa_line(2), bad]) + "\n")
    with pytest.raises(UserError) as ei:
        load_split("obqa", "eval", data_dir=tmp_path)
    msg = str(ei.value)
    assert f"{path}:3" in msg and why in msg


def test_small_local_file_parses(tmp_path):
    d = tmp_path / "obqa"
    d.mkdir()
    (d / "dev.jsonl").write_text("\n".join(_good_obqa_line(i, "BCDA"[i % 4]) for i in range(5)) + "\n")
    qs = load_split("obqa", "calib", data_dir=tmp_path)
    assert [q.id for q in qs] == [f"q{i}" for i in range(5)]
    assert [q.answer_index for q in qs] == [1, 2, 3, 0, 1]


# ---------------------------------------------------------------- demos


@needs_data
@pytest.mark.parametrize("bench,count", [("obqa", 7), ("csqa", 8), ("strategyqa", 8)])
def test_demos_load(bench, count):
    demos = load_demos(bench, DATA)
    assert len(demos) == count
    for d in demos:
        assert d.recall.strip()
        assert set(d.analyses) == set(d.question.labels)
        assert all(t.strip() for t in d.analyses.values())
        assert all(not t.lower().startswith(("correct", "incorrect")) for t in d.analyses.values())
        assert d.answer in d.question.labels and d.question.answer == d.answer
        if bench == "strategyqa":
            assert d.question.options == ("yes", "no")
        else:
            assert len(d.question.options) in (4, 5)


@needs_data
def test_demo_content_first_obqa():
    d = load_demos("obqa", DATA)[0]
    assert d.answer == "A"
    assert d.question.options[0] == "decrease in plant life"
    assert d.analyses["A"].startswith("because acid rain reduces water pH")


def test_demos_without_data_dir_come_from_the_packaged_copy():
    assert len(load_demos("obqa")) == 7


def test_demos_missing_file(tmp_path):
    with pytest.raises(UserError) as ei:
        load_demos("csqa", tmp_path)
    assert str(tmp_path / "tinythinker" / "csqa_cot.json") in str(ei.value)


def test_demos_unknown_bench(tmp_path):
    with pytest.raises(UserError, match="nope"):
        load_demos("nope", tmp_path)


def test_parse_options_keeps_commas_inside_text():
    labels, opts = parse_options("A. red, green, B. blue, C. x, y, z")
    assert labels == ("A", "B", "C")
    assert opts == ("red, green", "blue", "x, y, z")
