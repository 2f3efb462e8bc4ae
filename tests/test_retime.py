"""Re-timing a record made before interleaved timing: the command that reads its answers back."""
from __future__ import annotations

import shlex

import pytest

from litestage_bench.records.results import ItemResult, build_record, write_record
from litestage_bench.records.retime import main, retime_command

RUN = "litestage-bench run --bench obqa --limit 2 --method unified --k 4 --out results/old/name.json"


def _write(path, command=RUN, timing=None):
    items = [ItemResult(id="q0", answer="A", prediction="A", rule="letter", correct=True, latency_s=1.0,
                        stage_latency_s={}, tokens={"recall": 3})]
    write_record(path, build_record(model="smollm2-135m", benchmark="obqa", split="eval", method="unified",
                                    policy={"name": "unified-k4"}, answer_rule="letter", items=items,
                                    command=command, config={}, speedup=1.2, timing=timing))
    return str(path)


def test_an_old_record_gets_its_own_command_reading_its_answers_back_in_place(tmp_path):
    path = _write(tmp_path / "rec.json")
    args = shlex.split(retime_command(path))
    assert args[:2] == ["litestage-bench", "run"] and "--k" in args
    assert args[args.index("--out") + 1] == path and args[args.index("--answers-from") + 1] == path


def test_a_record_timed_in_rounds_is_left_alone(tmp_path, capsys):
    path = _write(tmp_path / "rec.json", timing={"rounds": 2})
    assert retime_command(path) is None
    assert main([path]) == 0 and capsys.readouterr().out == ""


@pytest.mark.parametrize("command", ["pytest --benchmark-only tests/bench_grid.py", "litestage-bench run --bench obqa"])
def test_a_record_not_made_by_run_with_out_is_a_one_line_error(command, tmp_path, capsys):
    path = _write(tmp_path / "rec.json", command=command)
    assert main([path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was not made by `litestage-bench run ... --out`" in err
