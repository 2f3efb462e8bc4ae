"""Result records: one self-describing JSON per model x benchmark x method x policy.

A record carries its per-item results and every aggregate computed from them, the machine and
library versions that produced it, and the command line, so any number in a table can be traced
back (interface.md, "Result record"). Files are always written atomically.
"""
from __future__ import annotations

import glob
import json
import math
import os
import platform
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable

from .. import __version__
from ..core.errors import UserError, print_error, write_error
from ..core.plugins import external_plugins
from ..core.schema import Checker
from . import fidelity as fid
from . import metrics, stats
from . import timing as paired_timing
from .drafting import summarize_drafting
from .items import ItemResult

# 2 added dtype/threads/device, the comparison with dense and per-item option scores; 1 still reads.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)

# The order in which answer rules are listed; unknown rules follow, sorted.
ANSWER_RULES = ("regex", "letter", "cloze", "none")


@dataclass
class ResultRecord:
    """Aggregates over ``items`` plus provenance; see ``build_record``.

    The fields after ``extra`` came with schema 2 and default to "absent" for schema-1 files.
    ``noise_floor`` (``records.noise.noise_floor_for``) is how often dense disagrees with itself when
    nothing that matters changed; the report reads its ``answer_flip_rate``, ``n_items``, ``dtype``,
    ``threads`` and ``note``.
    """

    schema_version: int
    model: str
    benchmark: str
    split: str
    n: int
    method: str
    policy: dict | str | None  # its parameters, or the path of the policy file
    accuracy: float
    accuracy_ci95: tuple[float, float]
    latency_s: float  # median per question
    stage_latency_s: dict[str, float]  # median per stage
    tokens: dict[str, float]  # mean generated per stage
    speedup: float | None  # vs dense, same items, same run
    executed_cost_fraction: dict[str, float]  # mean per stage
    answer_rule: str
    answer_rule_counts: dict[str, int]
    accuracy_by_rule: dict[str, float]
    machine: dict
    created: str
    command: str
    config: dict
    items: list[ItemResult]
    extra: dict = field(default_factory=dict)
    dtype: str | None = None
    threads: int | None = None
    device: str | None = None
    chance: float | None = None  # expected accuracy of a uniform guess over the options
    # t interval (timing.t_gm_ci95), same timed items as speedup; (nan, nan) when refused, the reason
    # in timing["speedup_ci95_refused"]; records without timing["speedup_interval"]: percentile bootstrap
    speedup_ci95: tuple[float, float] | None = None
    fidelity: dict | None = None  # fidelity.combine_fidelity vs dense; None for dense
    retention: float | None = None  # (acc - chance) / (dense acc - chance)
    mcnemar_p: float | None = None  # exact McNemar, method vs dense on the same items
    noise_floor: dict | None = None
    timing: dict = field(default_factory=dict)  # how latencies were taken (timed_ids, batch sizes...)
    numerics: str | None = None  # numerics.NUMERICS; absent in older records (= their dtype's own)
    # timing.decompose: per stage and "total", speedup = token_factor x per_token_factor
    speedup_decomposition: dict | None = None
    # drafted (lossless) stages: records.drafting.summarize_drafting; None when nothing was drafted
    speculative: dict | None = None


# --------------------------------------------------------------------------------------------
# Building


def _stage_order(dicts: list[dict]) -> list[str]:
    """Stage names in order of first appearance across ``dicts`` (recall, analyze, summarize...)."""
    seen: dict[str, None] = {}
    for d in dicts:
        for k in d:
            seen.setdefault(k, None)
    return list(seen)


def _per_stage(dicts: list[dict], agg: Callable[[list[float]], float]) -> dict[str, float]:
    """Aggregate a per-stage value over the items that have that stage."""
    return {s: agg([float(d[s]) for d in dicts if d.get(s) is not None]) for s in _stage_order(dicts)}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _rule_sort_key(rule: str) -> tuple[int, str]:
    return (ANSWER_RULES.index(rule), "") if rule in ANSWER_RULES else (len(ANSWER_RULES), rule)


def _same_answer(prediction: str | None, answer: str) -> bool:
    """Case- and whitespace-insensitive match; ``None`` (no answer extracted) is never right."""
    return prediction is not None and prediction.strip().casefold() == str(answer).strip().casefold()


def build_record(
    *,
    model: str,
    benchmark: str,
    split: str,
    method: str,
    policy: dict | str | None,
    answer_rule: str,
    items: list[ItemResult],
    command: str,
    config: dict,
    speedup: float | None = None,
    extra: dict | None = None,
    dense_items: list[ItemResult] | None = None,
    chance: float | None = None,
    noise_floor: dict | None = None,
    timing: dict | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    device: str | None = None,
    numerics: str | None = None,
) -> ResultRecord:
    """Compute every aggregate of a record from its items and stamp machine and time.

    ``accuracy_by_rule[r]`` re-scores every item with rule ``r``'s prediction (from
    ``predictions_by_rule``), so answer rules can be compared on the same generations.

    With ``dense_items`` (dense's results on the same ids; ``UserError`` otherwise) the record also
    gets its comparison with dense: each item's ``fidelity``, the aggregate ``fidelity``,
    ``mcnemar_p``, ``retention`` (when ``chance`` is given) and, unless ``speedup`` is passed,
    ``speedup`` and ``speedup_ci95`` over the items timed on both sides.
    """
    acc, ci = stats.accuracy_ci95([it.correct for it in items])
    comparison = _compare_with_dense(items, dense_items, answer_rule, chance, speedup) if dense_items is not None else {}
    speedup = comparison.pop("speedup", speedup)
    timing = {**(timing or {}), **comparison.pop("timing", {})}
    rule_counts = Counter(it.rule for it in items)
    rules_tried = {r for it in items for r in it.predictions_by_rule}
    accuracy_by_rule = {
        r: _mean([1.0 if _same_answer(it.predictions_by_rule.get(r), it.answer) else 0.0 for it in items])
        for r in sorted(rules_tried, key=_rule_sort_key)
    }
    return ResultRecord(
        schema_version=SCHEMA_VERSION,
        model=model,
        benchmark=benchmark,
        split=split,
        n=len(items),
        method=method,
        policy=policy,
        accuracy=acc,
        accuracy_ci95=ci,
        latency_s=metrics.median([it.latency_s for it in items]),
        stage_latency_s=_per_stage([it.stage_latency_s for it in items], metrics.median),
        tokens=_per_stage([it.tokens for it in items], _mean),
        speedup=speedup,
        executed_cost_fraction=_per_stage([it.executed_cost_fraction for it in items], _mean),
        answer_rule=answer_rule,
        answer_rule_counts={r: rule_counts[r] for r in sorted(rule_counts, key=_rule_sort_key)},
        accuracy_by_rule=accuracy_by_rule,
        machine=machine_info(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=command,
        config=dict(config),
        items=list(items),
        extra=dict(extra or {}),
        dtype=dtype,
        threads=threads,
        device=device,
        chance=_finite_or_none(chance),
        noise_floor=dict(noise_floor) if noise_floor is not None else None,
        timing=timing,
        numerics=numerics or dtype,
        speculative=summarize_drafting(items),
        **comparison,
    )


def _finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _compare_with_dense(
    items: list[ItemResult], dense_items: list[ItemResult], answer_rule: str, chance: float | None,
    speedup: float | None,
) -> dict:
    """The ``ResultRecord`` fields that compare ``items`` with dense's; fills each item's ``fidelity``."""
    pairs = fid.pair_items(dense_items, items)
    per_item = []
    for d, m in pairs:
        m.fidelity = fid.item_fidelity(d, m, answer_rule)
        per_item.append(m.fidelity)
    method_correct = [bool(m.correct) for _, m in pairs]
    dense_correct = [bool(d.correct) for d, _ in pairs]
    out: dict = {
        "fidelity": fid.combine_fidelity(per_item),
        "mcnemar_p": stats.mcnemar_exact_p(method_correct, dense_correct),
        "retention": fid.retention(_mean([float(c) for c in method_correct]),
                                   _mean([float(c) for c in dense_correct]), chance),
        "speedup": speedup,
    }
    if speedup is None:
        dense_side, method_side = [d for d, _ in pairs], [m for _, m in pairs]
        paired = paired_timing.paired_speedup(dense_side, method_side)
        if paired["n_items"]:
            out["speedup"] = _finite_or_none(paired["speedup"])
            out["speedup_ci95"] = paired["ci95"]
            out["speedup_decomposition"] = paired_timing.decompose(dense_side, method_side)
            out["timing"] = {"rounds": paired["rounds"], "speedup_rounds": paired["speedup_rounds"],
                             "speedup_estimator": "geometric mean of paired per-item ratios (timing.py)",
                             "speedup_interval": paired_timing.SPEEDUP_INTERVAL,
                             # dense's rounds timed beside the method's: the record alone then holds
                             # every pair, so its speedup and CI can be recomputed without a rerun
                             "dense_rounds": paired_timing.dense_rounds(dense_side, method_side)}
            if paired["ci95_refused"]:
                out["timing"]["speedup_ci95_refused"] = paired["ci95_refused"]
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict:
    """Where a record was produced: OS, CPU, GPU and the library versions that matter."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "litestage_bench": __version__,
        # method and benchmark plugins from outside the package, with their sources' sha256
        "plugins": external_plugins(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = bool(torch.cuda.is_available())
        info["gpu"] = torch.cuda.get_device_name(0) if info["cuda_available"] else None
    except ImportError:
        info.update(torch=None, torch_threads=None, cuda_available=False, gpu=None)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    return info


# --------------------------------------------------------------------------------------------
# JSON


def json_safe(x: Any) -> Any:
    """Tuples to lists and non-finite floats to ``None``: strict JSON that any tool can read
    (records, and the grid's pytest-benchmark extra_info)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def _nan_if_none(x: Any) -> float:
    return math.nan if x is None else float(x)


def item_to_dict(item: ItemResult) -> dict:
    return json_safe(asdict(item))


def item_from_dict(it: Any, source: str = "item", i: int = 0) -> ItemResult:
    """An ``ItemResult`` from its JSON form (``UserError`` naming what is missing or mistyped)."""
    if not isinstance(it, dict):
        raise UserError(f"{source}: items[{i}] must be an object", _rerun_fix(source))
    for key in _required(ItemResult):
        if key not in it:
            raise UserError(f"{source}: missing key {key!r} in items[{i}]", _rerun_fix(source))
    check = Checker(source, _rerun_fix(source))
    check.string(it["id"], f"items[{i}].id")
    check.string(it["prediction"], f"items[{i}].prediction", none_ok=True)
    check.flag(it["correct"], f"items[{i}].correct")
    check.number(it["latency_s"], f"items[{i}].latency_s", finite=False, none_ok=True)
    for key in ("stage_latency_s", "tokens"):
        check.obj(it[key], f"items[{i}].{key}")
    item_keys = {f.name for f in fields(ItemResult)}
    it = {k: v for k, v in it.items() if k in item_keys}  # tolerate additions from newer writers
    it["latency_s"] = _nan_if_none(it["latency_s"])
    if isinstance(it.get("option_scores"), dict):
        it["option_scores"] = {k: [_nan_if_none(x) for x in v] for k, v in it["option_scores"].items()}
    return ItemResult(**it)


def record_to_dict(record: ResultRecord) -> dict:
    """Plain JSON-ready dict (NaN written as ``null``; ``record_from_dict`` reads it back as nan)."""
    return json_safe(asdict(record))


def _required(cls: type) -> list[str]:
    from dataclasses import MISSING

    return [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]


def _rerun_fix(source: str) -> str:
    return f"re-run `litestage-bench run --model M --bench B --method X --out {source}` to regenerate it"


def _pair(check: Checker, value: Any, where: str, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if not isinstance(value, list) or len(value) != 2:
        raise check.fail(where, "a pair [low, high]" + (" or null" if none_ok else ""), value)
    for j, x in enumerate(value):
        check.number(x, f"{where}[{j}]", finite=False, none_ok=True)


def check_record_dict(d: dict, check: Checker) -> None:
    """The types of a record's fields that reports and `compare` read (null stands for NaN)."""
    for key in ("model", "benchmark", "method", "split", "answer_rule"):
        check.string(d[key], key)
    for key in ("numerics", "dtype", "device"):
        check.string(d.get(key), key, none_ok=True)
    check.whole(d["n"], "n", 0)
    if not isinstance(d["policy"], (dict, str, type(None))):
        raise check.fail("policy", "an object, a path or null", d["policy"])
    check.number(d["accuracy"], "accuracy", finite=False, none_ok=True)
    _pair(check, d["accuracy_ci95"], "accuracy_ci95")
    _pair(check, d.get("speedup_ci95"), "speedup_ci95", none_ok=True)
    for key in ("latency_s", "speedup", "mcnemar_p", "chance", "retention"):
        check.number(d.get(key), key, finite=False, none_ok=True)
    for key in ("stage_latency_s", "tokens", "executed_cost_fraction"):
        for stage, x in check.obj(d[key], key).items():
            check.number(x, f"{key}.{stage}", finite=False, none_ok=True)
    for key in ("answer_rule_counts", "accuracy_by_rule", "machine", "config"):
        check.obj(d[key], key)
    for key in ("extra", "timing", "fidelity", "noise_floor", "speedup_decomposition", "speculative"):
        check.obj(d.get(key), key, optional=True)
    fidelity = d.get("fidelity") or {}
    for key in ("n", "agreement", "answer_kl", "correct_to_wrong", "wrong_to_correct"):
        check.number(fidelity.get(key), f"fidelity.{key}", finite=False, none_ok=True)
    check.lst((d.get("timing") or {}).get("speedup_rounds"), "timing.speedup_rounds", optional=True)


def record_from_dict(d: Any, source: str = "result record") -> ResultRecord:
    """Rebuild a record, checking ``schema_version`` and required keys.

    Raises ``UserError`` naming ``source`` (a path, usually) and the missing or wrong key.
    """
    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(d).__name__}", _rerun_fix(source))
    if "schema_version" not in d:
        raise UserError(f"{source}: missing key 'schema_version'", _rerun_fix(source))
    if d["schema_version"] not in READABLE_SCHEMAS:
        raise UserError(
            f"{source}: schema_version {d['schema_version']!r} is not supported (this version reads "
            f"{', '.join(map(str, READABLE_SCHEMAS))})",
            _rerun_fix(source),
        )
    for key in _required(ResultRecord):
        if key not in d:
            raise UserError(f"{source}: missing key {key!r}", _rerun_fix(source))
    if not isinstance(d["items"], list):
        raise UserError(f"{source}: 'items' must be a list", _rerun_fix(source))
    check_record_dict(d, Checker(source, _rerun_fix(source)))
    items = [item_from_dict(it, source, i) for i, it in enumerate(d["items"])]
    rec_keys = {f.name for f in fields(ResultRecord)}
    kw = {k: v for k, v in d.items() if k in rec_keys}
    kw["items"] = items
    kw["accuracy"] = _nan_if_none(kw["accuracy"])
    ci = kw["accuracy_ci95"]
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        raise UserError(f"{source}: 'accuracy_ci95' must be a pair [low, high]", _rerun_fix(source))
    kw["accuracy_ci95"] = (_nan_if_none(ci[0]), _nan_if_none(ci[1]))
    kw["latency_s"] = _nan_if_none(kw["latency_s"])
    sci = kw.get("speedup_ci95")
    if sci is not None:
        if not isinstance(sci, (list, tuple)) or len(sci) != 2:
            raise UserError(f"{source}: 'speedup_ci95' must be a pair [low, high] or null", _rerun_fix(source))
        kw["speedup_ci95"] = (_nan_if_none(sci[0]), _nan_if_none(sci[1]))
    return ResultRecord(**kw)


# --------------------------------------------------------------------------------------------
# Files


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Write a file so that readers see the old content or the whole new one, never a part.

    ``write(fh)`` fills a temp file in the same directory (same filesystem, so ``os.replace`` is
    atomic); it is flushed and fsynced, then renamed over ``path``. On any exception the temp file
    is removed and the target is left untouched. Parent directories are created.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the writer's pid in the name tells a later run whether the writer is still alive (clean_stale_temps)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise (write_error(exc, path) or exc) from exc
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes 0600 files; give the result the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        err = write_error(exc, path) if isinstance(exc, OSError) else None
        if err is not None:  # a full disk: one line, nothing left
            raise err from exc
        raise
    return path


STALE_AFTER_S = 3600  # a temp file without a writer's pid counts as stale after this long unchanged


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files that killed atomic writes of ``path`` (or of files named ``path.*``,
    such as its checkpoint) left beside it; returns what was removed. A temp file of a live writer
    is kept (its pid is in the name; one without a pid only when changed within STALE_AFTER_S)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        parts = tmp.name.split(".")
        pid = parts[-3] if len(parts) >= 4 else ""
        try:
            if pid.isdigit():
                if _writer_alive(int(pid)):
                    continue
            elif time.time() - tmp.stat().st_mtime < STALE_AFTER_S:
                continue
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:  # its writer finished meanwhile
            continue
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (markdown tables and the like) to ``path``."""
    return atomic_write(path, lambda fh: fh.write(text))


def emit_markdown(render: Callable[[], str], out: str | os.PathLike | None) -> int:
    """The tail of a table command: render the markdown, write it to `out` (when given) and print it;
    exit status 0, or 2 with one line `litestage-bench: error: ...` on bad input (nothing written)."""
    try:
        text = render()
        if out:
            write_text_atomic(out, text)
    except UserError as err:
        print_error(err)
        return 2
    print(text)
    return 0


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Atomically write ``data`` as records are written: indented, strict JSON, a final newline."""
    def dump(fh: IO) -> None:
        json.dump(data, fh, indent=1, sort_keys=False, allow_nan=False)
        fh.write("\n")

    return atomic_write(path, dump)


def write_record(path: str | os.PathLike, record: ResultRecord) -> Path:
    """Atomically write ``record`` as indented JSON (strict: NaN becomes ``null``)."""
    return write_json(path, record_to_dict(record))


def record_files(path: str | os.PathLike) -> list[Path]:
    """One record file, or every ``*.json`` in a folder (a grid folder: its ``records/``) but the
    campaign files that plan its records (``campaign*.json``, studies.ledger)."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    folder = path / "records" if (path / "records").is_dir() else path
    files = sorted(f for f in folder.glob("*.json") if not f.name.startswith("campaign"))
    if not files:
        raise UserError(f"{folder} holds no result records (*.json)", "pass a record file or a folder of records")
    return files


def load_records(path: str | os.PathLike) -> list[ResultRecord]:
    """One record file, or every ``*.json`` record in a folder (a grid folder: its ``records/``)."""
    return [load_record(f) for f in record_files(path)]


def load_record(path: str | os.PathLike) -> ResultRecord:
    """Read a record written by ``write_record``; ``UserError`` naming the path on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"result file {path} does not exist", f"check the path, or {_rerun_fix(str(path))}") from None
    except IsADirectoryError:
        raise UserError(f"result path {path} is a directory", "pass a result JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read result file {path}: {exc}", _rerun_fix(str(path))) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"result file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            _rerun_fix(str(path)),
        ) from None
    try:
        return record_from_dict(data, source=str(path))
    except (TypeError, ValueError) as exc:  # wrong value types inside an otherwise complete record
        raise UserError(f"result file {path} is malformed: {exc}", _rerun_fix(str(path))) from None
