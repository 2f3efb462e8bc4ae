"""Few-shot demos: TinyThinker's hand-written stage-annotated examples.

File: ``{data_dir}/tinythinker/{bench}_cot.json`` (the data folder, else the copy packaged with the
suite, also used with the hub, which has no demos), a JSON list of
``{"Q", "Options": "A. ..., B. ...", "Key Information", "Explanations": ["X is correct. Because ...", ...]}``.
"Key Information" is the recall stage; "Explanations" the per-option analysis stage.
"""
from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from . import packaged
from .benchmarks import DATA_DIR_ENV, Question, check_bench, plugin_spec, resolve_data_dir

DEMO_DIR = "tinythinker"

_EXPL_RE = re.compile(r"^\s*\(?([A-Z])\)?\s+is\s+(correct|incorrect)\s*[.:,]?\s*(.*)$", re.S | re.I)


@dataclass(frozen=True)
class Demo:
    question: Question
    recall: str
    analyses: dict[str, str]  # label -> reason, e.g. "because acid rain reduces water pH, ..."
    answer: str  # the label whose explanation says "is correct"


def demo_path(bench: str, root: Path) -> Path:
    return root / DEMO_DIR / f"{bench}_cot.json"


def _bad(path: Path, idx: int, why: str) -> UserError:
    return UserError(
        f"malformed demo {idx} in {str(path)!r}: {why}",
        "restore TinyThinker's original file (see shared/data/README.md)",
    )


def parse_options(text: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"A. x, B. y, C. z"`` -> (("A","B","C"), ("x","y","z")).

    Labels must run A, B, C... in order; an option's text may itself hold commas, so the
    text is cut only at ``", <next label>. "``.
    """
    if isinstance(text, (list, tuple)):
        text = ", ".join(str(t) for t in text)
    if not isinstance(text, str):
        raise ValueError("Options is not a string")
    s = text.strip()
    m = re.match(r"\(?A[.)]\s*", s)
    if not m:
        raise ValueError(f"Options does not start with 'A.': {s[:40]!r}")
    labels: list[str] = []
    options: list[str] = []
    pos = m.end()
    letters = string.ascii_uppercase
    for i, label in enumerate(letters):
        nxt = letters[i + 1] if i + 1 < len(letters) else None
        cut = re.compile(r",\s*\(?" + re.escape(nxt) + r"[.)]\s+") if nxt else None
        found = cut.search(s, pos) if cut else None
        end = found.start() if found else len(s)
        labels.append(label)
        options.append(s[pos:end].strip().rstrip(",").strip())
        if not found:
            break
        pos = found.end()
    if any(not o for o in options):
        raise ValueError(f"empty option text in {s[:60]!r}")
    return tuple(labels), tuple(options)


def _reason(rest: str) -> str:
    rest = rest.strip()
    if rest[:7].lower() == "because":
        rest = "because" + rest[7:]
    return rest


def _parse_demo(rec: Any, bench: str, idx: int, path: Path) -> Demo:
    if not isinstance(rec, dict):
        raise _bad(path, idx, "not a JSON object")
    try:
        stem = rec["Q"]
        opts = rec["Options"]
        recall = rec["Key Information"]
        expls = rec["Explanations"]
    except KeyError as exc:
        raise _bad(path, idx, f"missing key {exc}") from None
    try:
        labels, options = parse_options(opts)
    except ValueError as exc:
        raise _bad(path, idx, str(exc)) from None
    if not isinstance(recall, str) or not recall.strip():
        raise _bad(path, idx, "empty 'Key Information'")
    if not isinstance(expls, list):
        raise _bad(path, idx, "'Explanations' is not a list")
    analyses: dict[str, str] = {}
    correct: list[str] = []
    for e in expls:
        m = _EXPL_RE.match(str(e))
        if not m:
            raise _bad(path, idx, f"explanation not of the form 'X is correct. Because ...': {str(e)[:50]!r}")
        label, verdict, rest = m.group(1).upper(), m.group(2).lower(), m.group(3)
        if label not in labels:
            raise _bad(path, idx, f"explanation for unknown option {label!r}")
        analyses[label] = _reason(rest)
        if verdict == "correct":
            correct.append(label)
    if len(correct) != 1:
        raise _bad(path, idx, f"expected exactly one 'is correct' explanation, found {len(correct)}")
    missing = [lab for lab in labels if lab not in analyses]
    if missing:
        raise _bad(path, idx, f"no explanation for option(s) {missing}")
    answer = correct[0]
    q = Question(id=f"tinythinker-{bench}-{idx}", stem=str(stem).strip(), options=options,
                 labels=labels, answer=answer)
    return Demo(question=q, recall=recall.strip(), analyses={lab: analyses[lab] for lab in labels},
                answer=answer)


def load_demos(bench: str, data_dir: str | os.PathLike | None = None) -> list[Demo]:
    """TinyThinker's demos for ``bench``, from the data folder, else from the packaged copy (a
    benchmark plugin borrows a built-in benchmark's demos)."""
    check_bench(bench)
    spec = plugin_spec(bench)
    if spec is not None:
        return load_demos(spec.demos, data_dir)
    # the hub has no demos: prompts are the same whichever source the items come from
    root = resolve_data_dir(data_dir) or packaged.demo_root(bench)
    path = demo_path(bench, root)
    if not path.is_file():
        raise UserError(
            f"demo file {str(path)!r} is missing",
            f"put TinyThinker's {DEMO_DIR}/{bench}_cot.json in the folder named by {DATA_DIR_ENV}",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"malformed demo file {str(path)}:{exc.lineno}: bad JSON ({exc.msg})",
            "restore TinyThinker's original file (see shared/data/README.md)",
        ) from None
    if not isinstance(data, list):
        raise _bad(path, 0, "expected a JSON list of demos")
    return [_parse_demo(rec, bench, i, path) for i, rec in enumerate(data)]
