"""Choose a model's answer rule on calibration items: every rule's accuracy on the same dense
generations (`predictions_by_rule`), beside the rule the record ran with, paired.

    python -m litestage_bench.studies.answer_rule CALIB_RECORD.json|DENSE_ROW.json ... --out results/headline/answer_rule.md

Each record must be dense on the calibration split (`litestage-bench run ... --split calib`), so the
rule is never chosen on evaluation items. A LiteStage search's dense row
(`results/search/MODEL_BENCH/dense-SHA.json`: dense on the search's calibration items, every rule's
prediction kept) serves as well, at no extra cost; its own rule is the model's default. Per record: each rule's accuracy with its Wilson 95% CI,
its items gained / lost against the record's own rule and the exact McNemar p. The chosen rule is
the most accurate one; a tie keeps the record's rule. With a record per benchmark the choice is per
benchmark (the reasoner's `--answer-rule`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from tabulate import tabulate

from ..core.errors import UserError
from ..records import fidelity, stats
from ..engine.models import MODELS
from ..methods.search_rows import load_row
from ..records.results import ResultRecord, emit_markdown, item_from_dict, load_record

COLUMNS = ["model", "benchmark", "n", "rule", "accuracy [95% CI]", "vs the record's rule (+gained/-lost)",
           "McNemar p", "chosen"]


def rule_hits(r: ResultRecord) -> dict[str, list[bool]]:
    """Per rule, whether each item's prediction under that rule is its gold answer."""
    return fidelity.rule_hits(r.items)


def choose(r: ResultRecord) -> str:
    """The most accurate rule; a tie keeps the record's own rule."""
    return fidelity.most_accurate_rule(r.items, r.answer_rule)


def load_calibration(path: str):
    """A record, or a search's dense row read as one (model, benchmark, split, method, answer_rule,
    items, n, command: what this table reads)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not (isinstance(data, dict) and data.get("kind") == "dense" and "rows_version" in data):
        return load_record(path)
    row = load_row(Path(path), "dense")  # the search's own validation of a row read back
    key, value = row["key"], row["value"]
    if "model" not in key or "bench" not in key:
        raise UserError(f"{path} is not a whole dense row of a search", "pass the dense-SHA.json the search wrote")
    items = [item_from_dict(it, f"search row {path}", i) for i, it in enumerate(value["items"])]
    spec = MODELS.get(key["model"])
    own = key.get("config", {}).get("answer_rule") or (spec.default_answer_rule if spec else "letter")
    return SimpleNamespace(model=key["model"], benchmark=key["bench"], split="calib", method="dense",
                           answer_rule=own, items=items, n=len(items),
                           command=f"the dense calibration pass of a LiteStage search: {Path(path).as_posix()}")


def record_rows(path: str) -> list[list[str]]:
    return calibration_rows(load_calibration(path), path)


def calibration_rows(r, path: str) -> list[list[str]]:
    """The table's rows of one calibration record (or dense row) `r`, read from `path`."""
    if r.split != "calib" or r.method != "dense":
        raise UserError(f"{path} is {r.method} on the {r.split} split, not dense on calibration items",
                        "run `litestage-bench run --model M --bench B --split calib --limit 100 --out R.json`")
    hits = rule_hits(r)
    if r.answer_rule not in hits:
        raise UserError(f"{path} holds no prediction for its own rule {r.answer_rule!r}", "re-run the record")
    own, chosen = hits[r.answer_rule], choose(r)
    rows = []
    for rule, v in hits.items():
        acc, (lo, hi) = stats.accuracy_ci95(v)
        gained = sum(a and not b for a, b in zip(v, own))
        lost = sum(b and not a for a, b in zip(v, own))
        same = rule == r.answer_rule
        rows.append([r.model, r.benchmark, str(r.n), rule + (" (the record's)" if same else ""),
                     f"{acc:.3f} [{lo:.3f}, {hi:.3f}]", "-" if same else f"+{gained}/-{lost}",
                     "-" if same else f"{stats.mcnemar_exact_p(v, own):.3f}", "yes" if rule == chosen else ""])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litestage_bench.studies.answer_rule", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", nargs="+", help="dense records on the calibration split")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args(argv)
    command = "python -m litestage_bench.studies.answer_rule " + " ".join(sys.argv[1:] if argv is None else argv)

    def render() -> str:
        loaded = {p: load_calibration(p) for p in args.records}
        table = tabulate([row for p, r in loaded.items() for row in calibration_rows(r, p)], headers=COLUMNS,
                         tablefmt="github", disable_numparse=True)
        return (f"# The answer rule, chosen on calibration items\n\nRendered with `{command}`.\n\n"
                "Every rule scores the same dense generations; the chosen rule is the most accurate (a tie keeps "
                f"the record's own).\n\n{table}\n\nRecords:\n"
                + "".join(f"- `{r.command}`\n" for r in loaded.values()))

    return emit_markdown(render, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
