"""Methods and benchmarks as entry-point plugins: numeric labels, the code version, import errors,
and (slow) the two packages of examples/ pip-installed offline into a fresh venv and run through
`litestage-bench run` and one grid case."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from litestage_bench.core import plugins
from litestage_bench.core.code_version import code_version
from litestage_bench.core.errors import UserError
from litestage_bench.evaluation.jsonl_bench import JsonlBenchmark

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def test_numeric_labels_become_option_letters():
    spec = JsonlBenchmark(path=EXAMPLES / "arc_numeric" / "arc_numeric" / "items.jsonl",
                          question="question.stem", choices="question.choices")
    evaluation, calib = spec.load("arc_numeric", "eval"), spec.load("arc_numeric", "calib")
    assert (len(evaluation), len(calib)) == (15, 5) and not {q.id for q in evaluation} & {q.id for q in calib}
    first = next(q for q in evaluation + calib if q.id == "arcnum-01")  # answerKey "2" of "1".."4"
    assert first.labels == ("A", "B", "C", "D") and first.original_labels == ("1", "2", "3", "4")
    assert first.answer == "B" and first.options[first.answer_index] == "light energy"


def test_other_choice_forms_and_a_malformed_item(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"id": 1, "q": "Hot?", "opts": ["yes", "no"], "ans": 1}) + "\n"
                    + json.dumps({"id": 2, "q": "Cold?", "opts": {"text": ["x", "y", "z"], "label": [1, 2, 3]},
                                  "ans": 3}) + "\n")
    spec = JsonlBenchmark(path=path, question="q", choices="opts", label="ans", calib_path=path)
    q1, q2 = spec.load("mine", "eval")
    assert (q1.answer, q2.answer, q2.original_labels) == ("B", "C", ("1", "2", "3"))
    path.write_text(json.dumps({"id": 1, "q": "Hot?", "opts": ["yes", "no"], "ans": "C"}) + "\n")
    with pytest.raises(UserError, match=r"benchmark plugin 'mine': malformed item at .*:1: label 'C'"):
        spec.load("mine", "eval")


def test_a_plugin_that_fails_to_import_is_one_line_naming_it():
    ep = EntryPoint(name="broken", value="no_such_module_for_litestage:Thing", group=plugins.METHODS_GROUP)
    with pytest.raises(UserError) as err:
        plugins.load_entry_point(ep)
    assert "plugin 'broken'" in str(err.value) and "ModuleNotFoundError" in str(err.value)
    assert "\n" not in str(err.value)


def _fake_distribution(root: Path, source: str) -> Path:
    """An installed distribution with one method plugin, as pip would leave it in site-packages."""
    (root / "fake_method_plugin.py").write_text(source)
    info = root / "fake_method_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-method-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{plugins.METHODS_GROUP}]\nfake = fake_method_plugin:Fake\n")
    return root / "fake_method_plugin.py"


def test_editing_an_external_plugin_changes_the_code_version(tmp_path, monkeypatch):
    code_version.cache_clear()
    before = code_version()
    source = _fake_distribution(tmp_path, "Fake = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        code_version.cache_clear()
        installed = code_version()
        [listed] = [p for p in plugins.external_plugins() if p["name"] == "fake"]
        assert listed["distribution"] == "fake-method-plugin" and listed["version"] == "0.1"
        source.write_text("Fake = 1  # edited\n")
        code_version.cache_clear()
        edited = code_version()
        assert len({before, installed, edited}) == 3
        assert plugins.external_plugins() != [listed]  # its sha256 moved with the source
    finally:
        code_version.cache_clear()


def test_a_broken_plugin_stops_the_cli_with_one_line(tmp_path, monkeypatch, capsys):
    from litestage_bench.cli import main
    _fake_distribution(tmp_path, "raise ImportError('needs the package foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_LOADED", {})  # discover the group afresh
    code = main(["run", "--bench", "obqa", "--method", "dense", "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("litestage-bench: error: plugin 'fake'")
    assert "needs the package foo" in err and "pip uninstall fake-method-plugin" in err


def test_the_package_imports_no_plugin_by_name():
    code = ("import sys, litestage_bench, litestage_bench.cli, litestage_bench.methods.registry; "
            "print(sorted(m for m in sys.modules if m.startswith(('baselines', 'litestage_bench.methods.litestage'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ examples, installed


def _venv_with_this_environment(folder: Path) -> Path:
    """A fresh venv that sees this interpreter's packages (and the project) through a .pth file."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(purelib) / "_parent_environment.pth").write_text("\n".join([*ours, str(REPO)]) + "\n")
    return python


def _can_build_wheels_offline() -> bool:
    try:
        import wheel  # noqa: F401
        return True
    except ImportError:
        from importlib.metadata import version
        return tuple(int(x) for x in version("setuptools").split(".")[:2]) >= (70, 1)


GRID_SCRIPT = """
import json, sys
from litestage_bench.grid.cache import AccuracyCache
from litestage_bench.grid.cases import GridCase, selection_from_options
from litestage_bench.grid.run import GridContext, run_case
from litestage_bench.grid.store import GridStore

class Timer:  # pytest-benchmark's fixture, reduced to what a case uses
    extra_info = {}
    def pedantic(self, target, args=(), kwargs=None, rounds=1, iterations=1):
        return target(*args, **(kwargs or {}))

model, out = sys.argv[1], sys.argv[2]
opts = {"--models": model, "--benches": "arc_numeric", "--methods": "skip_third_ffn", "--points": None,
        "--stages": "all", "--limit": 2, "--timed": 1, "--batch-size": 2, "--dtype": "float32", "--numerics": None,
        "--device": "cpu", "--policy-dir": out + "/policies", "--no-search": True, "--search-limit": None,
        "--rounds": 1, "--timing": "latency", "--chunks": None, "--chunk-rounds": None}
sel = selection_from_options(opts.__getitem__, main_job=True)
ctx = GridContext(sel, AccuracyCache(out + "/cache"), "test", search_dir=out + "/searched",
                  config_overrides={"max_new_tokens": {"recall": 4, "analyze": 3, "summarize": 3},
                                    "answer_rule": "cloze"}, log=lambda m: None)
store = GridStore()
for case in (GridCase(model, "arc_numeric"), GridCase(model, "arc_numeric", "skip_third_ffn")):
    store.add(run_case(case, ctx, Timer()))
record = store.record_for(store.results[GridCase(model, "arc_numeric", "skip_third_ffn").id])
print(json.dumps({"n": record.n, "answers": [it.answer for it in record.items],
                  "predictions": [it.prediction for it in record.items],
                  "plugins": record.machine["plugins"], "code": record.extra.get("code_version")}))
"""


@pytest.mark.slow
def test_examples_installed_offline_run_through_the_cli_and_the_grid(tmp_path):
    if not _can_build_wheels_offline():
        pytest.skip("building the examples offline needs the wheel package or setuptools>=70.1 (pip install wheel)")
    from tiny_reasoner import smollm2_tokenizer, tiny_llama
    python = _venv_with_this_environment(tmp_path / "venv")
    for example in ("skip_third_ffn", "arc_numeric"):
        source = shutil.copytree(EXAMPLES / example, tmp_path / "src" / example)  # the build writes in-tree
        subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                        "--quiet", str(source)], check=True, cwd=tmp_path,
                       env={**os.environ, "PIP_NO_INPUT": "1"})
    model_dir = tmp_path / "tiny-model"  # a local model folder: a tiny random llama, SmolLM2's tokenizer
    tokenizer = smollm2_tokenizer()
    tiny_llama(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    env = {**os.environ, "LITESTAGE_CACHE": str(tmp_path / "model-cache")}

    out = tmp_path / "run.json"
    cli = [str(python), "-m", "litestage_bench", "run", "--model", str(model_dir), "--bench", "arc_numeric",
           "--method", "skip_third_ffn", "--limit", "2", "--timed", "1", "--rounds", "1", "--batch-size", "2",
           "--max-new-tokens", "4,3,3", "--answer-rule", "cloze", "--dtype", "float32", "--out", str(out)]
    proc = subprocess.run(cli, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "arc_numeric" and record["method"] == "skip_third_ffn" and record["n"] == 2
    assert record["policy"] == {"name": "skip_third_ffn", "every": 3}
    assert all(it["answer"] in "ABCD" and it["prediction"] in "ABCD" for it in record["items"])
    names = {p["name"]: p for p in record["machine"]["plugins"]}
    assert set(names) == {"skip_third_ffn", "arc_numeric"} and all(len(p["sha256"]) == 64 for p in names.values())

    grid = subprocess.run([str(python), "-c", GRID_SCRIPT, str(model_dir), str(tmp_path / "grid")],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert grid.returncode == 0, grid.stderr[-3000:]
    result = json.loads(grid.stdout.strip().splitlines()[-1])
    assert result["n"] == 2 and all(a in "ABCD" for a in result["answers"])
    assert {p["name"] for p in result["plugins"]} == {"skip_third_ffn", "arc_numeric"} and result["code"]
