"""Benchmark loading: OBQA, CSQA and StrategyQA, and the benchmark plugins (``jsonl_bench.py``),
as multiple-choice ``Question`` lists.

Source of the data: the ``data_dir`` argument, else the ``LITESTAGE_DATA_DIR`` environment
variable, else the copy packaged with the suite (``litestage_bench/data``, offline). Either may name
a folder with the benchmarks' original files (see ``shared/data/README.md``), or one of the
keywords ``"packaged"`` (the packaged copy) and ``"hub"`` (the Hugging Face hub through
``datasets``, online only).

Splits: ``eval`` (reported accuracy) and ``calib`` (searches / calibration); they never
overlap, by id or by question text.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import UserError
from ..core.plugins import BENCHMARKS_GROUP, load_group
from . import packaged

BENCHMARKS: tuple[str, ...] = ("obqa", "csqa", "strategyqa")  # built in; plugins: plugin_benchmarks()
SPLITS: tuple[str, ...] = ("eval", "calib")
DATA_DIR_ENV = "LITESTAGE_DATA_DIR"
# Keywords accepted in place of a folder (data_dir / $LITESTAGE_DATA_DIR / --data-dir).
# A folder with one of these names is given as ./hub or ./packaged.
PACKAGED = "packaged"
HUB = "hub"

# StrategyQA has no labelled test set: the 2290 labelled questions are split with a fixed
# seed (independent of the ``seed`` argument of ``load_split``).
STRATEGYQA_SPLIT_SEED = 0
STRATEGYQA_EVAL_SIZE = 229  # 10% of 2290, TinyThinker's test size
STRATEGYQA_OPTIONS: tuple[str, ...] = ("yes", "no")
STRATEGYQA_LABELS: tuple[str, ...] = ("A", "B")

# Local files, relative to the data dir.
LOCAL_FILES: dict[str, dict[str, str]] = {
    "obqa": {"eval": "obqa/test.jsonl", "calib": "obqa/dev.jsonl"},
    "csqa": {"eval": "csqa/dev_rand_split.jsonl", "calib": "csqa/train_rand_split.jsonl"},
    "strategyqa": {"eval": "strategyqa/strategyqa_train.json", "calib": "strategyqa/strategyqa_train.json"},
}

HUB_IDS: dict[str, tuple[str, str | None, dict[str, str]]] = {
    # bench -> (hub id, config, our split -> hub split)
    "obqa": ("allenai/openbookqa", "main", {"eval": "test", "calib": "validation"}),
    "csqa": ("tau/commonsense_qa", None, {"eval": "validation", "calib": "train"}),
    "strategyqa": ("ChilleD/StrategyQA", None, {}),  # all labelled splits pooled, then split
}


@dataclass(frozen=True)
class Question:
    id: str
    stem: str
    options: tuple[str, ...]
    labels: tuple[str, ...]
    answer: str
    # a plugin's labels as in its file ("1".."4"), when `labels` are the option letters they map to
    original_labels: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def answer_index(self) -> int:
        return self.labels.index(self.answer)


def normalize_stem(text: str) -> str:
    """Question text compared case- and whitespace-insensitively (for overlap checks)."""
    return re.sub(r"\s+", " ", text).strip().lower()


# ---------------------------------------------------------------- validation helpers


def plugin_benchmarks() -> dict[str, Any]:
    """name -> spec (``jsonl_bench.JsonlBenchmark``) of every installed benchmark plugin."""
    specs = load_group(BENCHMARKS_GROUP)
    for name, spec in specs.items():
        if name in BENCHMARKS or not callable(getattr(spec, "load", None)):
            raise UserError(f"benchmark plugin {name!r} is not a JsonlBenchmark or shadows a built-in benchmark",
                            "declare a litestage_bench.evaluation.jsonl_bench.JsonlBenchmark under a new name")
    return specs


def plugin_spec(bench: str) -> Any | None:
    """The plugin spec of a benchmark; None for a built-in one (no plugin is imported then)."""
    return None if bench in BENCHMARKS else plugin_benchmarks().get(bench)


def check_bench(bench: str) -> str:
    if bench not in BENCHMARKS and plugin_spec(bench) is None:
        raise UserError(
            f"unknown benchmark {bench!r}",
            f"use one of: {', '.join((*BENCHMARKS, *sorted(plugin_benchmarks())))}",
        )
    return bench


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}", f"use one of: {', '.join(SPLITS)}")
    return split


def resolve_source(data_dir: str | os.PathLike | None) -> Path | str:
    """Where the items come from: a folder (``Path``), ``PACKAGED`` or ``HUB``.

    The argument wins, then ``$LITESTAGE_DATA_DIR``; with neither, the packaged copy.
    """
    if data_dir is not None and str(data_dir) != "":
        src, value = "the data_dir option", data_dir
    else:
        env = os.environ.get(DATA_DIR_ENV, "")
        if not env:
            return PACKAGED
        src, value = f"${DATA_DIR_ENV}", env
    # only a plain string is a keyword: Path("./hub") prints as "hub" but names a folder
    if isinstance(value, str) and value in (PACKAGED, HUB):
        return value
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(
            f"data folder {str(path.absolute())!r} (from {src}) does not exist or is not a folder",
            f"set {DATA_DIR_ENV} (or the data-dir option) to a folder holding the benchmarks' "
            f"original files (obqa/, csqa/, strategyqa/), to '{PACKAGED}' for the copy shipped "
            f"with the suite, or to '{HUB}' for the Hugging Face hub",
        )
    return path


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data folder from the argument or ``$LITESTAGE_DATA_DIR``; None for the packaged copy or the hub.

    Raises a UserError for a folder that does not exist (callers use it to check input early).
    """
    source = resolve_source(data_dir)
    return source if isinstance(source, Path) else None


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise UserError(
            f"data file {str(path)!r} is missing",
            f"put the original file there, or point {DATA_DIR_ENV} at a folder that has it",
        )
    return path


def _malformed(path: Path | str, line: int | None, why: str) -> UserError:
    where = f"{path}:{line}" if line is not None else f"{path}"
    return UserError(
        f"malformed data in {where}: {why}",
        "restore the original file (see shared/data/README.md for the expected format)",
    )


# ---------------------------------------------------------------- local parsers


def _mc_from_record(rec: Any, path: Path, lineno: int) -> Question:
    """OBQA 'Main' / CSQA jsonl record -> Question."""
    try:
        qid = rec["id"]
        q = rec["question"]
        stem = q["stem"]
        choices = q["choices"]
        key = rec["answerKey"]
        labels = tuple(str(c["label"]).strip() for c in choices)
        options = tuple(str(c["text"]) for c in choices)
    except (KeyError, TypeError) as exc:
        raise _malformed(path, lineno, f"missing key {exc}") from None
    if not isinstance(stem, str) or not labels:
        raise _malformed(path, lineno, "empty question or choices")
    if len(set(labels)) != len(labels):
        raise _malformed(path, lineno, f"duplicate choice labels {labels}")
    key = str(key).strip()
    if key not in labels:
        raise _malformed(path, lineno, f"answerKey {key!r} not among labels {labels}")
    return Question(id=str(qid), stem=stem, options=options, labels=labels, answer=key)


@functools.lru_cache(maxsize=16)
def _parse_jsonl_cached(path_str: str, mtime_ns: int, size: int) -> tuple[Question, ...]:
    path = Path(path_str)
    out: list[Question] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _malformed(path, lineno, f"bad JSON ({exc.msg})") from None
            out.append(_mc_from_record(rec, path, lineno))
    _check_unique_ids(out, path)
    return tuple(out)


def _check_unique_ids(questions: Iterable[Question], path: Path | str) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise _malformed(path, None, f"duplicate id {q.id!r}")
        seen.add(q.id)


def _strategyqa_question(qid: Any, text: Any, answer: Any, path: Path | str, where: int) -> Question:
    if not isinstance(text, str) or not text.strip():
        raise _malformed(path, where, "empty question")
    if isinstance(answer, str) and answer.strip().lower() in ("true", "false", "yes", "no"):
        answer = answer.strip().lower() in ("true", "yes")
    if not isinstance(answer, bool):
        raise _malformed(path, where, f"answer {answer!r} is not a boolean")
    return Question(
        id=str(qid),
        stem=text,
        options=STRATEGYQA_OPTIONS,
        labels=STRATEGYQA_LABELS,
        answer="A" if answer else "B",
    )


@functools.lru_cache(maxsize=4)
def _parse_strategyqa_cached(path_str: str, mtime_ns: int, size: int) -> tuple[Question, ...]:
    path = Path(path_str)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _malformed(path, exc.lineno, f"bad JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise _malformed(path, None, "expected a JSON list of questions")
    out = []
    for i, rec in enumerate(data):
        # for a JSON list, report the item number (1-based) as the position
        try:
            out.append(_strategyqa_question(rec["qid"], rec["question"], rec["answer"], path, i + 1))
        except (KeyError, TypeError) as exc:
            raise _malformed(path, i + 1, f"item {i + 1}: missing key {exc}") from None
    _check_unique_ids(out, path)
    return tuple(out)


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------- StrategyQA split


def strategyqa_split(questions: Iterable[Question]) -> dict[str, list[Question]]:
    """Fixed seeded split of the labelled StrategyQA questions into eval / calib
    (``STRATEGYQA_EVAL_SIZE`` items for eval)."""
    return seeded_split(questions, STRATEGYQA_EVAL_SIZE)


def seeded_split(questions: Iterable[Question], eval_size: int) -> dict[str, list[Question]]:
    """Fixed seeded split into eval / calib.

    Sort by id, shuffle with ``random.Random(STRATEGYQA_SPLIT_SEED)``, then walk the
    shuffled list by question-text group (questions with the same text always go to the
    same side, so the two splits never share a question text) and fill eval up to
    ``eval_size`` items; the rest is calib. Both lists come back sorted by id.
    """
    items = sorted(questions, key=lambda q: q.id)
    rng = random.Random(STRATEGYQA_SPLIT_SEED)
    rng.shuffle(items)
    groups: dict[str, list[Question]] = {}
    for q in items:  # dicts keep first-seen order = shuffled order
        groups.setdefault(normalize_stem(q.stem), []).append(q)
    eval_items: list[Question] = []
    calib_items: list[Question] = []
    for group in groups.values():
        if len(eval_items) + len(group) <= eval_size:
            eval_items.extend(group)
        else:
            calib_items.extend(group)
    return {
        "eval": sorted(eval_items, key=lambda q: q.id),
        "calib": sorted(calib_items, key=lambda q: q.id),
    }


# ---------------------------------------------------------------- hub loading


def _hub_error(bench: str, exc: BaseException) -> UserError:
    return UserError(
        f"could not load {bench!r} from the Hugging Face hub ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'})",
        f"leave {DATA_DIR_ENV} and --data-dir unset to use the copy shipped with the suite (offline), "
        f"or point them at a folder with the original files (see shared/data/README.md)",
    )


def _hub_choices(rec: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ch = rec["choices"]
    if isinstance(ch, dict):
        return tuple(str(x).strip() for x in ch["label"]), tuple(str(x) for x in ch["text"])
    return tuple(str(c["label"]).strip() for c in ch), tuple(str(c["text"]) for c in ch)


def _load_hub(bench: str, split: str) -> list[Question]:
    hub_id, config, split_map = HUB_IDS[bench]
    try:
        import datasets  # lazy: heavy import, only for online users
    except ImportError as exc:
        raise _hub_error(bench, exc) from None
    try:
        if bench == "strategyqa":
            dsd = datasets.load_dataset(hub_id) if config is None else datasets.load_dataset(hub_id, config)
            records: list[dict] = []
            for name in sorted(dsd.keys()):
                records.extend(dict(r) for r in dsd[name])
        else:
            hub_split = split_map[split]
            ds = (datasets.load_dataset(hub_id, config, split=hub_split) if config
                  else datasets.load_dataset(hub_id, split=hub_split))
            records = [dict(r) for r in ds]
    except UserError:
        raise
    except Exception as exc:  # network, auth, missing dataset, schema changes...
        raise _hub_error(bench, exc) from None

    where = f"hub:{hub_id}"
    out: list[Question] = []
    if bench == "strategyqa":
        seen: set[str] = set()
        for i, rec in enumerate(records):
            qid = rec.get("qid", rec.get("id", f"strategyqa-{i}"))
            text = rec.get("question", rec.get("input"))
            ans = rec.get("answer", rec.get("label"))
            q = _strategyqa_question(qid, text, ans, where, i + 1)
            if q.id in seen:  # same question in two hub splits: keep one
                continue
            seen.add(q.id)
            out.append(q)
        return strategyqa_split(out)[split]
    for i, rec in enumerate(records):
        try:
            labels, options = _hub_choices(rec)
            stem = rec.get("question_stem", rec.get("question"))
            if isinstance(stem, dict):
                stem = stem.get("stem")
            key = str(rec["answerKey"]).strip()
            qid = str(rec.get("id", f"{bench}-{split}-{i}"))
        except (KeyError, TypeError) as exc:
            raise _malformed(where, i + 1, f"missing key {exc}") from None
        if not isinstance(stem, str) or key not in labels:
            raise _malformed(where, i + 1, f"answerKey {key!r} not among labels {labels} or no stem")
        out.append(Question(id=qid, stem=stem, options=options, labels=labels, answer=key))
    return out


# ---------------------------------------------------------------- packaged copy


def _packaged_question(rec: Any, where: str, pos: int) -> Question:
    try:
        q = Question(id=rec["id"], stem=rec["stem"], options=tuple(rec["options"]),
                     labels=tuple(rec["labels"]), answer=rec["answer"])
    except (KeyError, TypeError) as exc:
        raise _malformed(where, pos, f"missing key {exc}") from None
    if not all(isinstance(x, str) for x in (q.id, q.stem, q.answer, *q.options, *q.labels)):
        raise _malformed(where, pos, "a field is not text")
    if q.answer not in q.labels or len(q.options) != len(q.labels):
        raise _malformed(where, pos, f"answer {q.answer!r} not among labels {q.labels} or options/labels differ")
    return q


@functools.lru_cache(maxsize=8)
def _packaged_cached(bench: str, path_str: str, mtime_ns: int, size: int, sha256: str) -> dict[str, tuple[Question, ...]]:
    splits = packaged.read_items(Path(path_str), sha256)
    where = f"packaged:{bench}"
    out: dict[str, tuple[Question, ...]] = {}
    for split in SPLITS:
        recs = splits.get(split)
        if not isinstance(recs, list):
            raise _malformed(where, None, f"no {split!r} split")
        out[split] = tuple(_packaged_question(rec, f"{where}:{split}", i + 1) for i, rec in enumerate(recs))
        _check_unique_ids(out[split], f"{where}:{split}")
    return out


def _load_packaged(bench: str, split: str) -> list[Question]:
    path, sha256 = packaged.items_file(bench)
    if not path.is_file():
        raise UserError(f"packaged data file {str(path)!r} is missing", packaged.REBUILD)
    # keyed by the file's stat and expected sha256: a changed file is re-read and re-checked
    return list(_packaged_cached(bench, *_stat_key(path), sha256)[split])


# ---------------------------------------------------------------- public API


def _load_full_split(bench: str, split: str, data_dir: str | os.PathLike | None) -> list[Question]:
    spec = plugin_spec(bench)
    if spec is not None:  # a plugin ships its own file: the data folder does not apply
        return spec.load(bench, split)
    root = resolve_source(data_dir)
    if root == PACKAGED:
        return _load_packaged(bench, split)
    if root == HUB:
        return _load_hub(bench, split)
    path = _require_file(root / LOCAL_FILES[bench][split])
    if bench == "strategyqa":
        return strategyqa_split(_parse_strategyqa_cached(*_stat_key(path)))[split]
    return list(_parse_jsonl_cached(*_stat_key(path)))


def subset(questions: list[Question], limit: int | None, seed: int = 0) -> list[Question]:
    """Seeded subset of ``limit`` items, kept in the original order.

    The permutation depends only on ``seed`` and the number of items, so a smaller limit
    always gives a subset of a larger one.
    """
    if limit is None or limit >= len(questions):
        return list(questions)
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    keep = sorted(order[:limit])
    return [questions[i] for i in keep]


def load_split(
    bench: str,
    split: str = "eval",
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> list[Question]:
    """Load one benchmark split as a list of ``Question`` (file order).

    ``limit``: a seeded subset of that many items (the same every time for a given seed;
    limit 100 is a subset of limit 200); larger than the split gives the whole split.
    """
    check_bench(bench)
    check_split(split)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise UserError(f"limit must be a whole number, got {limit!r}", "pass a positive integer or no limit")
        if limit <= 0:
            raise UserError(f"limit must be positive, got {limit}", "pass a positive integer or no limit")
    return subset(_load_full_split(bench, split, data_dir), limit, seed)


def split_ids(bench: str, split: str, data_dir: str | os.PathLike | None = None) -> set[str]:
    """The ids of a whole split."""
    return {q.id for q in load_split(bench, split, data_dir=data_dir)}


def items_sha256(splits: dict[str, list[Question]]) -> str:
    """sha256 of the splits' packaged JSON: equal items give equal hashes whatever their source."""
    raw = packaged.canonical_json({s: [packaged.item_dict(q) for q in qs] for s, qs in splits.items()})
    return hashlib.sha256(raw).hexdigest()


def data_fingerprint(bench: str, data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """What identifies a benchmark's items, for cache keys and records.

    ``{"source": "packaged" | "folder" | "hub", "items_sha256": ...}``: the sha256 of the eval and
    calib items in the packaged format (the manifest's ``items_sha256`` for the packaged copy), so a
    folder or the hub holding the same items gives the same hash.
    """
    check_bench(bench)
    if plugin_spec(bench) is not None:
        return {"source": "plugin", "items_sha256": items_sha256({s: load_split(bench, s) for s in SPLITS})}
    source = resolve_source(data_dir)
    kind = source if isinstance(source, str) else "folder"
    if source == PACKAGED:
        _load_packaged(bench, "eval")  # checks the file against the manifest
        sha = packaged.manifest()["benchmarks"][bench]["items_sha256"]
    else:
        sha = items_sha256({split: load_split(bench, split, data_dir=data_dir) for split in SPLITS})
    return {"source": kind, "items_sha256": sha}


def check_items(items: list[Question], bench: str, split: str, data_dir=None) -> list[Question]:
    """``UserError`` for a split with no questions (an empty data file): nothing to measure."""
    if not items:
        raise UserError(f"benchmark '{bench}' split '{split}' has no questions"
                        + (f" in {data_dir}" if data_dir else ""),
                        "check the data file (litestage-bench data BENCH --data-dir DIR), or use the packaged data")
    return items


def check_disjoint(calib: list[Question], evaluation: list[Question]) -> None:
    """Calibration never touches evaluation items (by id and by question text)."""
    ids = {q.id for q in evaluation}
    stems = {normalize_stem(q.stem) for q in evaluation}
    bad = [q.id for q in calib if q.id in ids or normalize_stem(q.stem) in stems]
    if bad:
        raise UserError(f"{len(bad)} calibration items are also evaluation items (e.g. {bad[0]})",
                        "the calibration split must not overlap the evaluation split")
