"""The packaged copy of the benchmarks (litestage_bench/data): equal to the originals, sha256-checked,
the default source, and equal to what the Hugging Face hub mapping gives (on a constructed sample)."""
from __future__ import annotations

import gzip
import hashlib
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from litestage_bench.core.errors import UserError
from litestage_bench.evaluation import benchmarks, packaged
from litestage_bench.evaluation.benchmarks import (BENCHMARKS, DATA_DIR_ENV, HUB, PACKAGED, SPLITS, data_fingerprint,
                                                   load_split, normalize_stem, resolve_data_dir, resolve_source, subset)
from litestage_bench.evaluation.demos import load_demos

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
needs_originals = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no original files in {SHARED}")
LICENSES = {"obqa": "Apache-2.0", "csqa": "MIT", "strategyqa": "MIT"}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    # conftest points LITESTAGE_DATA_DIR at ../shared/data; these tests choose their source themselves
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def _packaged(bench: str, split: str):
    return load_split(bench, split, data_dir=PACKAGED)


# ---------------------------------------------------------------- equal to the originals


@needs_originals
@pytest.mark.parametrize("bench", BENCHMARKS)
@pytest.mark.parametrize("split", SPLITS)
def test_packaged_splits_equal_the_originals(bench, split):
    assert _packaged(bench, split) == load_split(bench, split, data_dir=SHARED)


@needs_originals
def test_build_script_reproduces_the_committed_copy():
    proc = subprocess.run([sys.executable, "scripts/build_packaged_data.py", "--data-dir", str(SHARED), "--check"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_originals
def test_manifest_names_the_source_files_sha256():
    man = packaged.manifest()
    for bench in BENCHMARKS:
        for split, info in man["benchmarks"][bench]["splits"].items():
            assert info["source_file"] == benchmarks.LOCAL_FILES[bench][split]
            assert info["source_sha256"] == packaged.sha256_file(SHARED / info["source_file"])
        assert data_fingerprint(bench, SHARED)["items_sha256"] == data_fingerprint(bench)["items_sha256"]


# ---------------------------------------------------------------- content and manifest


@pytest.mark.parametrize("bench", BENCHMARKS)
def test_eval_and_calib_never_overlap(bench):
    ev, ca = _packaged(bench, "eval"), _packaged(bench, "calib")
    assert ev and ca
    assert not {q.id for q in ev} & {q.id for q in ca}
    assert not {normalize_stem(q.stem) for q in ev} & {normalize_stem(q.stem) for q in ca}


def test_manifest_sha256_sizes_counts_and_licences():
    man = packaged.manifest()
    assert man["item_fields"] == list(packaged.ITEM_FIELDS)
    files = [*man["benchmarks"].values(), *man["demos"].values(),
             *({"file": rel, **e} for rel, e in man["other_files"].items())]
    for entry in files:
        path = packaged.PACKAGED_DIR / entry["file"]
        assert packaged.sha256_file(path) == entry["sha256"], entry["file"]
        assert path.stat().st_size == entry["bytes"]
    for bench in BENCHMARKS:
        entry = man["benchmarks"][bench]
        assert entry["license"] == LICENSES[bench] and entry["origin"]
        raw = gzip.decompress((packaged.PACKAGED_DIR / entry["file"]).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == entry["items_sha256"]
        for split in SPLITS:
            assert entry["splits"][split]["items"] == len(_packaged(bench, split))
        assert man["demos"][bench]["license"] == "MIT"
        assert man["demos"][bench]["items"] == len(load_demos(bench))
    assert (packaged.PACKAGED_DIR / "tinythinker" / "LICENSE").read_text().startswith("MIT License")
    total = sum(e["bytes"] for e in files)
    assert total < 1_500_000, f"the packaged copy grew to {total} bytes"


def test_gzip_files_are_deterministic():
    # mtime 0 and no file name in the gzip header: a rebuild gives the same bytes
    for bench in BENCHMARKS:
        head = (packaged.PACKAGED_DIR / f"{bench}.json.gz").read_bytes()[:10]
        assert head[4:8] == b"\0\0\0\0" and not head[3] & 0x08  # MTIME = 0, FNAME flag unset


# ---------------------------------------------------------------- loading order


def _no_hub(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the hub was asked")
    monkeypatch.setattr(benchmarks, "_load_hub", refuse)


def test_default_source_is_the_packaged_copy(monkeypatch):
    _no_hub(monkeypatch)
    assert resolve_source(None) == PACKAGED and resolve_data_dir(None) is None
    assert load_split("obqa", "eval") == _packaged("obqa", "eval")
    assert len(load_split("csqa", "calib", limit=7)) == 7
    assert data_fingerprint("strategyqa")["source"] == PACKAGED


def test_keywords_and_folders(monkeypatch, tmp_path):
    assert resolve_source(HUB) == HUB and resolve_data_dir(HUB) is None
    assert resolve_source(tmp_path) == tmp_path
    monkeypatch.setenv(DATA_DIR_ENV, HUB)
    assert resolve_source(None) == HUB
    assert resolve_source(PACKAGED) == PACKAGED  # the argument wins over the variable
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_source(None) == tmp_path
    # only a plain string is a keyword: a Path names a folder (here: missing)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="'hub'"):
        resolve_source(Path(HUB))


def _tampered_copy(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "data"
    shutil.copytree(packaged.PACKAGED_DIR, root)
    monkeypatch.setattr(packaged, "PACKAGED_DIR", root)
    return root


def test_sha256_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    root = _tampered_copy(tmp_path, monkeypatch)
    path = root / "obqa.json.gz"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(UserError) as ei:
        load_split("obqa", "eval")
    msg = str(ei.value)
    assert "sha256 mismatch" in msg and str(path) in msg and "build_packaged_data.py" in msg
    demo = root / "tinythinker" / "csqa_cot.json"
    demo.write_text(demo.read_text() + " ")
    with pytest.raises(UserError, match="sha256 mismatch"):
        load_demos("csqa")


def test_missing_packaged_file_is_a_clear_error(tmp_path, monkeypatch):
    root = _tampered_copy(tmp_path, monkeypatch)
    (root / "strategyqa.json.gz").unlink()
    with pytest.raises(UserError, match="strategyqa.json.gz.*missing"):
        load_split("strategyqa", "calib")
    (root / packaged.MANIFEST).unlink()
    with pytest.raises(UserError, match="MANIFEST.json.*missing"):
        load_split("obqa", "eval")


# ---------------------------------------------------------------- demos offline


@pytest.mark.parametrize("bench,count", [("obqa", 7), ("csqa", 8), ("strategyqa", 8)])
def test_demos_load_offline(bench, count, monkeypatch):
    demos = load_demos(bench)
    assert len(demos) == count and load_demos(bench, HUB) == demos  # the hub has no demos: same prompts
    if SHARED.is_dir():
        assert load_demos(bench, SHARED) == demos


# ---------------------------------------------------------------- the hub mapping


def _hub_records(bench: str, questions) -> list[dict]:
    """Records in the hub datasets' schema (allenai/openbookqa 'main', tau/commonsense_qa, ChilleD/StrategyQA)."""
    if bench == "obqa":
        return [{"id": q.id, "question_stem": q.stem, "answerKey": q.answer,
                 "choices": {"text": list(q.options), "label": list(q.labels)}} for q in questions]
    if bench == "csqa":
        return [{"id": q.id, "question": q.stem, "question_concept": "concept", "answerKey": q.answer,
                 "choices": {"label": list(q.labels), "text": list(q.options)}} for q in questions]
    return [{"qid": q.id, "term": "t", "description": "d", "question": q.stem, "answer": q.answer == "A",
             "facts": ["f"], "decomposition": ["d"]} for q in questions]


def _fake_hub(monkeypatch, bench: str, hub_splits: dict[str, list[dict]]) -> list:
    datasets = pytest.importorskip("datasets")
    built = datasets.DatasetDict({name: datasets.Dataset.from_list(recs) for name, recs in hub_splits.items()})
    hub_id, config, _ = benchmarks.HUB_IDS[bench]
    calls = []

    def load_dataset(path, name=None, *, split=None, **kwargs):
        assert (path, name) == (hub_id, config), "wrong hub id or config"
        calls.append(split)
        return built if split is None else built[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("bench", ["obqa", "csqa"])
def test_hub_mapping_gives_the_packaged_items(bench, monkeypatch):
    # a few packaged items per split, put into the hub split that our split maps to
    sample = {split: subset(_packaged(bench, split), 12, seed=3) for split in SPLITS}
    hub_split = benchmarks.HUB_IDS[bench][2]
    calls = _fake_hub(monkeypatch, bench, {hub_split[s]: _hub_records(bench, qs) for s, qs in sample.items()})
    for split in SPLITS:
        assert load_split(bench, split, data_dir=HUB) == sample[split]
    assert calls == [hub_split[s] for s in SPLITS]


def test_hub_mapping_gives_the_packaged_strategyqa_split(monkeypatch):
    # the split is computed on the pooled hub splits, so the sample is every labelled question, spread
    # over the hub's two splits in a scrambled order
    pool = _packaged("strategyqa", "eval") + _packaged("strategyqa", "calib")
    random.Random(5).shuffle(pool)
    cut = len(pool) * 7 // 10
    _fake_hub(monkeypatch, "strategyqa", {"train": _hub_records("strategyqa", pool[:cut]),
                                          "test": _hub_records("strategyqa", pool[cut:])})
    for split in SPLITS:
        assert load_split("strategyqa", split, data_dir=HUB) == _packaged("strategyqa", split)
    assert data_fingerprint("strategyqa", HUB) == {"source": HUB, **{k: v for k, v in data_fingerprint(
        "strategyqa").items() if k != "source"}}


def test_hub_failure_names_the_offline_default(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*a, **k):
        raise ConnectionError("no network")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as ei:
        load_split("obqa", "eval", data_dir=HUB)
    assert "ConnectionError" in str(ei.value) and "shipped with the suite" in str(ei.value)
