"""Every bad input ends in one line `litestage-bench: error: PROBLEM -- fix: FIX`, status 2, no
traceback and no new file; checked before any model loads where the arguments and files allow.

The table's cases need no model (they fail before the load); the last tests run a tiny random llama
saved as a model folder."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from litestage_bench.cli import EXIT_USAGE, main
from litestage_bench.core.errors import UserError
from litestage_bench.engine.early_exit import ExitRule

LAYERS = 30  # smollm2-135m, the default model


def _plan(**stages) -> dict:
    return {"schema_version": 1, "name": "p", "stages": stages}


def _litestage(**over) -> dict:
    policy = {"schema_version": 1, "method": "litestage", "model": "smollm2-135m", "num_layers": LAYERS,
              "stages": {s: {"skip": {"attn": [1], "ffn": []}} for s in ("recall", "analyze", "summarize")},
              "early_exit": {"recall": {"window": 4, "threshold": 0.3}, "analyze": None, "summarize": None}}
    policy.update(over)
    return policy


SLEB = {"schema_version": 1, "method": "sleb", "model": "smollm2-135m", "num_layers": LAYERS,
        "removal_order": [3, 5], "nll": [1.0, 1.1], "rounds": [{}, {}]}
ADASKIP = {"schema_version": 1, "method": "adaskip", "model": "smollm2-135m", "num_layers": LAYERS}
SELFSPEC = {"schema_version": 1, "method": "selfspec", "model": "smollm2-135m", "num_layers": LAYERS}


def _record_file(tmp: Path, name: str, **over) -> Path:
    from test_results import make_record

    from litestage_bench.records.results import record_to_dict
    data = record_to_dict(make_record("dense"))
    data.update(over)
    path = tmp / name
    path.write_text(json.dumps(data))
    return path


# (id, files to write {name: JSON value or text}, arguments ({tmp} = the test's folder), words of the error)
CASES = [
    ("plan: list for a stage", {"p.json": _plan(recall=[1, 2])},
     "run --bench obqa --method plan --policy {tmp}/p.json", ["'stages.recall' must be an object, not a list"]),
    ("plan: list for a skip set", {"p.json": _plan(recall={"prefill": [1]})},
     "run --bench obqa --method plan --policy {tmp}/p.json", ["'stages.recall.prefill' must be an object"]),
    ("plan: a list, not an object", {"p.json": [1, 2]},
     "run --bench obqa --method plan --policy {tmp}/p.json", ["must be an object, not a list"]),
    ("plan: misspelled stage", {"p.json": _plan(analyse={"decode": {"ffn": [2]}})},
     "run --bench obqa --method plan --policy {tmp}/p.json", ["unknown stage 'analyse'", "recall, analyze, summarize"]),
    ("plan: misspelled key", {"p.json": _plan(recall={"decod": {"ffn": [2]}})},
     "run --bench obqa --method plan --policy {tmp}/p.json", ["unknown key 'decod'"]),
    ("plan: string layer", {"p.json": _plan(recall={"decode": {"ffn": ["2"]}})},
     "run --bench obqa --method plan --policy {tmp}/p.json", ["'stages.recall.decode.ffn[0]' must be a whole number"]),
    ("plan: nan threshold", {"p.json": _plan(recall={"dynamic_ffn": {"candidates": [1], "threshold": "nan"}})},
     "run --bench obqa --method plan --policy {tmp}/p.json", ["threshold' must be a finite number"]),
    ("litestage: list for early_exit", {"p.json": _litestage(early_exit=[0.3])},
     "run --bench obqa --method litestage --policy {tmp}/p.json", ["'early_exit' must be an object, not a list"]),
    ("litestage: list for a stage's skip", {"p.json": _litestage(stages={s: {"skip": [1]} for s in
                                                                         ("recall", "analyze", "summarize")})},
     "run --bench obqa --method litestage --policy {tmp}/p.json", ["'stages.recall.skip' must be an object"]),
    ("litestage: misspelled stage", {"p.json": _litestage(early_exit={"analyse": {"window": 4, "threshold": 0.3}})},
     "run --bench obqa --method litestage --policy {tmp}/p.json", ["unknown stage 'analyse'"]),
    ("litestage: nan threshold", {"p.json": _litestage(early_exit={"recall": {"window": 4, "threshold": "nan"}})},
     "run --bench obqa --method litestage --policy {tmp}/p.json", ["'early_exit.recall.threshold' must be a finite"]),
    ("litestage: NaN threshold", {"p.json": '{"schema_version": 1, "method": "litestage", "model": "smollm2-135m", '
                                            '"num_layers": 30, "stages": {"recall": {"skip": {}}, "analyze": {"skip": '
                                            '{}}, "summarize": {"skip": {}}}, "early_exit": {"recall": {"window": 4, '
                                            '"threshold": NaN}}}'},
     "run --bench obqa --method litestage --policy {tmp}/p.json", ["must be a finite number, not nan"]),
    ("litestage: layer out of range", {"p.json": _litestage(stages={s: {"skip": {"attn": [30]}} for s in
                                                                    ("recall", "analyze", "summarize")})},
     "run --bench obqa --method litestage --policy {tmp}/p.json", ["names layer 30 but the model has 30 layers"]),
    ("selfspec: draft length 0", {"p.json": {**SELFSPEC, "draft": {"skip": {"attn": [1]}, "k": 0}}},
     "run --bench obqa --method selfspec --policy {tmp}/p.json", ["'draft.k'"]),
    ("litestage-spec: draft layer out of range", {"p.json": {**SELFSPEC, "method": "litestage-spec", "stages": {
        "recall": {"draft": {"skip": {"attn": [30]}, "k": 2}}, "analyze": {"draft": None}, "summarize": {}}}},
     "run --bench obqa --method litestage-spec --policy {tmp}/p.json", ["stages.recall.draft.skip.attn", "30"]),
    ("search: draft length 0", {}, "search --bench obqa --method selfspec --draft-ks 2,0 --out {tmp}/p.json",
     ["argument --draft-ks: 0 must be >= 1"]),
    ("search: missing ranking policy", {}, "search --bench obqa --method selfspec --ranking-from {tmp}/none.json "
     "--out {tmp}/p.json", ["policy file", "does not exist"]),
    ("sleb: list for calibration", {"p.json": {**SLEB, "calibration": [50]}},
     "run --bench obqa --method sleb --k 1 --policy {tmp}/p.json", ["'calibration' must be an object, not a list"]),
    ("adaskip: object for the ranking", {"p.json": {**ADASKIP, "ranking": {"attn": 1}}},
     "run --bench obqa --method adaskip --k 1 --policy {tmp}/p.json", ["'ranking' must be a list, not an object"]),
    ("adaskip: list for calibration", {"p.json": {**ADASKIP, "ranking": [["attn", j] for j in range(LAYERS)] +
                                                  [["ffn", j] for j in range(LAYERS)],
                                                  "similarity": {"attn": [0.9] * LAYERS, "ffn": [0.9] * LAYERS},
                                                  "norm_ratio": {"attn": [1.0] * LAYERS, "ffn": [1.0] * LAYERS},
                                                  "calibration": []}},
     "run --bench obqa --method adaskip --k 1 --policy {tmp}/p.json", ["'calibration' must be an object"]),
    ("empty benchmark file", {"data/obqa/test.jsonl": ""},
     "run --bench obqa --data-dir {tmp}/data", ["split 'eval' has no questions"]),
    ("empty calibration file (search)", {"data/obqa/test.jsonl": "", "data/obqa/dev.jsonl": ""},
     "search --bench obqa --method litestage --data-dir {tmp}/data", ["split 'calib' has no questions"]),
    ("unknown device", {}, "run --bench obqa --device foo", ["unknown device 'foo'"]),
    ("model folder without a tokenizer", {"m/config.json": {"model_type": "llama"}},
     "run --bench obqa --model {tmp}/m", ["has no tokenizer"]),
    ("model folder without config.json", {"m/tokenizer.json": {}}, "run --bench obqa --model {tmp}/m",
     ["has no config.json"]),
    ("--k -1", {}, "run --bench obqa --method unified --k -1", ["argument --k: -1 must be >= 0"]),
    ("--shots -1", {}, "run --bench obqa --shots -1", ["argument --shots: -1 must be >= 0"]),
    ("--max-new-tokens with a 0 cap", {}, "run --bench obqa --max-new-tokens 0,32,16", ["cap below 1"]),
    ("--max-new-tokens 0", {}, "run --bench obqa --max-new-tokens 0", ["not three whole numbers"]),
    ("missing required argument", {}, "run", ["required: --bench"]),
    ("compare: a list for fidelity", {}, "compare {tmp}/a.json {tmp}/bad.json", ["'fidelity' must be an object"]),
    ("compare: a string for n", {}, "compare {tmp}/a.json {tmp}/n.json", ["'n' must be a whole number"]),
    ("compare: missing reference", {}, "compare {tmp}/none.json {tmp}/a.json", ["does not exist"]),
    ("compare: bad option", {}, "compare {tmp}/a.json {tmp}/a.json --speed-tol x", ["--speed-tol"]),
]


def _snapshot(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def assert_one_error_line(code: int, err: str, needles) -> str:
    lines = err.splitlines()
    assert code == EXIT_USAGE, err
    assert len(lines) == 1, err
    assert lines[0].startswith("litestage-bench: error:") and " -- fix: " in lines[0], err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("files, args, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(files, args, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a derived default output would land here (results/)
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    if args.startswith("compare"):
        from test_results import make_record

        from litestage_bench.records.results import write_record
        write_record(tmp_path / "a.json", make_record("dense"))
        _record_file(tmp_path, "bad.json", fidelity=[1])
        _record_file(tmp_path, "n.json", n="4")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args.split()]
    if argv[0] in ("run", "search"):
        argv += ["--out", str(tmp_path / "out" / "r.json")]
    before = _snapshot(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    assert_one_error_line(code, captured.err, needles)
    assert _snapshot(tmp_path) == before  # no result, no partial, no temp file


def test_a_nan_threshold_is_refused_in_code_too():
    with pytest.raises(UserError, match="finite"):
        ExitRule(4, float("nan"))


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from test_results import make_record

    from litestage_bench.records import results
    rec = results.write_record(tmp_path / "a.json", make_record("dense"))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results.os, "fsync", full)
    before = _snapshot(tmp_path)
    code = main(["report", str(rec), "--markdown", str(tmp_path / "table.md")])
    line = assert_one_error_line(code, capsys.readouterr().err, ["No space left on device", "table.md"])
    assert "free disk space" in line
    assert _snapshot(tmp_path) == before


def test_a_write_error_outside_atomic_write_is_one_line_too(monkeypatch, capsys):
    import litestage_bench.cli as cli

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "results/x.partial.jsonl")

    monkeypatch.setattr(cli, "cmd_models", full)
    assert_one_error_line(main(["models"]), capsys.readouterr().err, ["x.partial.jsonl", "No space left"])


# ------------------------------------------------------------------------ with a tiny model folder

TINY_RUN = ["--bench", "obqa", "--limit", "1", "--timed", "1", "--rounds", "1", "--batch-size", "1",
            "--max-new-tokens", "2,2,2"]


def test_a_full_disk_at_the_record_keeps_only_the_checkpoint(tiny_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.json"
    real_dump = json.dump

    def full(obj, fh, **kw):
        if isinstance(obj, dict) and "items" in obj:  # the record, not anything else
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_dump(obj, fh, **kw)

    monkeypatch.setattr(json, "dump", full)
    code = main(["run", "--model", str(tiny_folder), *TINY_RUN, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"litestage-bench: error: could not write {out}: No space left")
    # the finished work stays for the rerun after space is freed; no record and no temp file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json.partial.jsonl"]


def test_next_run_cleans_what_a_killed_run_left_and_names_outputs_by_the_folder(tiny_folder, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    out = results / "tiny_obqa_dense.json"  # the model's folder name, not its absolute path
    dead_pid = 2 ** 22 + 1  # above Linux's pid_max: no such process
    stale = results / f".{out.name}.{dead_pid}.abcd1234.tmp"
    stale.write_text("{")
    Path(f"{out}.partial.jsonl").write_text('{"fingerprint": "another run"}\n')
    code = main(["run", "--model", str(tiny_folder), *TINY_RUN])
    err = capsys.readouterr().err
    assert code == 0, err
    assert sorted(p.name for p in results.iterdir()) == [out.name]
    assert f"removed 1 stale temp file(s) of a killed run beside {out.relative_to(tmp_path)}: {stale.name}" in err
    assert "the checkpoint of another run" in err
    assert json.loads(out.read_text())["model"] == str(tiny_folder)
