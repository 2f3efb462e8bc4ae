"""Which cases the grid runs: models x benchmarks x methods x budget points x stage selections.

The selection comes from the pytest options (conftest.py) and is checked here, before anything
loads, so that a bad option is one line (``UserError``), not a traceback.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import UserError
from ..engine.models import DEFAULT_MODEL, MODELS, check_numerics
from ..engine.plan import STAGES
from ..evaluation.benchmarks import BENCHMARKS, check_bench
from ..methods.registry import METHODS, load_plugins
from ..records.throughput import DEFAULT_CHUNK_ROUNDS, DEFAULT_CHUNKS, parse_timing
from ..records.timing import DEFAULT_ROUNDS

# Budget points (k, in each method's own unit) for the methods that take one. The default run
# takes one mid point per method, so that a cold run of the default grid stays near 20 minutes on a
# 2-core CPU; `--points sweep` takes the sweeps (light to heavy skipping on the 24-30-layer
# embedded models), `--points 'unified=2,4'` sets them per method.
DEFAULT_POINTS: dict[str, tuple[int, ...]] = {
    "unified": (4,),  # intermediate layers skipped
    "early_exit": (2,),  # last layers skipped
    "skipdecode": (8,),  # lower layers skipped at most, per decode step
    "adaskip": (8,),  # sub-layers (attention + FFN)
    "shortgpt": (4,),  # layers removed
    "sleb": (2,),  # blocks removed (the committed SLEB policies hold 2 removals)
}
SWEEP_POINTS: dict[str, tuple[int, ...]] = {
    "unified": (2, 4, 8), "early_exit": (2, 4), "skipdecode": (4, 8), "adaskip": (4, 8, 16),
    "shortgpt": (2, 4), "sleb": (2, 4),
}
# The plain `pytest` run (CI) keeps the grid to a smoke: dense and one cheap point on 2 items.
SMOKE_METHODS = "dense,unified"
SMOKE_POINTS = {"unified": (4,)}
SMOKE_LIMIT, SMOKE_TIMED = 2, 1
# The main job (`pytest --benchmark-only`) that a newcomer waits for: every method on one benchmark,
# one accuracy batch; `--benches all` (or a list) is the full grid.
MAIN_BENCHES = "obqa"
MAIN_LIMIT = 4  # items per benchmark in `pytest --benchmark-only` (one batch, every item timed: the job a newcomer waits for)
MAIN_TIMED = 4  # of them timed at batch 1 per case, beside dense: an even count, so that in 1 round each side
# goes first on half the items (a question's first solve runs slower: results/intervals/aa_latency_timed3.md)
MAIN_ROUNDS = 1  # interleaved rounds per timed item in the main job (the order alternates by item)
UNRUNNABLE = {"plan": "it needs a plan file: use `litestage-bench run --method plan --policy FILE`"}
STAGE_ABBREV = {"recall": "R", "analyze": "A", "summarize": "S"}


def slug(name: str) -> str:
    """A file- and id-safe form of a model name (hub ids and paths carry '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def takes_k(method: str) -> bool:
    return bool(getattr(METHODS[method], "needs_k", False))


def needs_search(method: str) -> bool:
    return bool(getattr(METHODS[method], "needs_search", False))


@dataclass(frozen=True)
class GridCase:
    """One benchmark case: a method at one budget point, skipping in one stage selection."""

    model: str
    bench: str
    method: str = "dense"
    k: int | None = None
    stages: tuple[str, ...] = STAGES

    def sort_key(self) -> tuple:
        """The order of tables and records: dense first in each (model, benchmark) group."""
        return (self.model, self.bench, self.method != "dense", self.method,
                -1 if self.k is None else self.k, self.stages != STAGES, self.stages)

    @property
    def point(self) -> str:
        """The budget point: ``k=4`` for methods with a k, ``policy`` for a searched policy alone."""
        if self.k is not None:
            return f"k={self.k}"
        return "policy" if self.method != "dense" and needs_search(self.method) else "-"

    @property
    def stage_label(self) -> str:
        return "all" if self.stages == STAGES else "+".join(self.stages)

    @property
    def id(self) -> str:
        """pytest id and record file stem: model-bench-method[-kK][-st-R+A]."""
        parts = [slug(self.model), self.bench, self.method]
        if self.k is not None:
            parts.append(f"k{self.k}")
        if self.stages != STAGES:
            parts.append("st-" + "+".join(STAGE_ABBREV[s] for s in self.stages))
        return "-".join(parts)

    @property
    def group(self) -> str:
        """The (model, benchmark) group: one xdist worker runs all of it, dense included."""
        return f"{slug(self.model)}-{self.bench}"

    def to_dict(self) -> dict:
        return {"model": self.model, "bench": self.bench, "method": self.method, "k": self.k,
                "stages": list(self.stages)}

    @staticmethod
    def from_dict(d: dict) -> "GridCase":
        return GridCase(d["model"], d["bench"], method=d["method"], k=d["k"], stages=tuple(d["stages"]))


def _names(text: str, what: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise UserError(f"--{what} is empty", f"pass at least one, e.g. --{what} {_EXAMPLE[what]}")
    return list(dict.fromkeys(names))


_EXAMPLE = {"models": DEFAULT_MODEL, "benches": "obqa", "methods": "dense,unified"}


def check_model_name(name: str) -> None:
    if name in MODELS or Path(name).exists() or "/" in name:
        return
    raise UserError(f"--models: unknown model '{name}'",
                    f"use an alias ({', '.join(MODELS)}), a local model folder, or a Hugging Face id")


def parse_methods(text: str) -> list[str]:
    """'all' = every registered method the grid can run; dense always runs (the reference)."""
    load_plugins()
    if text.strip() == "all":
        names = [m for m in sorted(METHODS) if m not in UNRUNNABLE]
    else:
        names = _names(text, "methods")
        for m in names:
            if m not in METHODS:
                raise UserError(f"--methods: unknown method '{m}'", f"use 'all' or some of: {', '.join(sorted(METHODS))}")
            if m in UNRUNNABLE:
                raise UserError(f"--methods: the grid cannot run '{m}': {UNRUNNABLE[m]}", f"drop '{m}' from --methods")
    return ["dense"] + [m for m in names if m != "dense"]


def parse_points(text: str | None, methods: list[str]) -> dict[str, tuple[int, ...]]:
    """'unified=2,4,8;early_exit=2,4' -> k values per method (the defaults for the others);
    'sweep' (alone or as the first part) starts from SWEEP_POINTS instead."""
    parts = (text or "").split(";")
    defaults = DEFAULT_POINTS
    if parts[0].strip() == "sweep":
        defaults, parts = SWEEP_POINTS, parts[1:]
    points = {m: defaults.get(m, (4,)) for m in methods if takes_k(m)}
    for part in parts:
        if not part.strip():
            continue
        name, sep, values = part.partition("=")
        name = name.strip()
        fix = "write it as METHOD=K1,K2;METHOD=K (e.g. --points 'unified=2,4,8;early_exit=2')"
        if not sep:
            raise UserError(f"--points: '{part.strip()}' has no '='", fix)
        if name not in METHODS:
            raise UserError(f"--points: unknown method '{name}'", fix)
        if not takes_k(name):
            with_k = ", ".join(sorted(m for m in METHODS if takes_k(m)))
            raise UserError(f"--points: method '{name}' takes no k", f"give points only to {with_k}")
        if name not in methods:
            raise UserError(f"--points: method '{name}' is not selected", "add it to --methods, or drop its points")
        try:
            ks = tuple(dict.fromkeys(int(v) for v in values.split(",") if v.strip()))
        except ValueError:
            raise UserError(f"--points: '{values.strip()}' for '{name}' is not whole numbers", fix) from None
        if not ks or any(k < 0 for k in ks):
            raise UserError(f"--points: '{name}' needs whole numbers >= 0", fix)
        points[name] = ks
    return points


def parse_stage_sets(text: str) -> list[tuple[str, ...]]:
    """'all;analyze;recall,summarize' -> stage selections (each in stage order)."""
    out: list[tuple[str, ...]] = []
    for part in text.split(";"):
        names = [s.strip() for s in part.split(",") if s.strip()]
        if not names:
            continue
        if names == ["all"]:
            names = list(STAGES)
        bad = [s for s in names if s not in STAGES]
        if bad:
            raise UserError(f"--stages: unknown stage '{bad[0]}'",
                            f"use 'all' or stages of {', '.join(STAGES)}; separate selections with ';'")
        sel = tuple(s for s in STAGES if s in names)
        if sel not in out:
            out.append(sel)
    if not out:
        raise UserError("--stages is empty", "pass 'all' or e.g. 'analyze;recall,summarize'")
    return out


def check_device(device: str) -> str:
    if device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device):
        return device
    raise UserError(f"--device: unknown device '{device}'", "use cpu, cuda or cuda:N")


@dataclass
class GridSelection:
    """Everything the options choose; `cases()` lists the grid in its deterministic order."""

    models: list[str]
    benches: list[str]
    methods: list[str]
    points: dict[str, tuple[int, ...]]
    stage_sets: list[tuple[str, ...]]
    limit: int | None  # None: the whole evaluation split
    timed: int | None  # items timed per case (None: all of them)
    rounds: int  # interleaved rounds of dense and the method per timed item
    batch_size: int
    dtype: str | None
    device: str
    numerics: str | None
    policy_dir: Path
    search_missing: bool
    search_limit: int | None
    main_job: bool  # `pytest --benchmark-only`: writes under results/; else a smoke in a temp folder
    timing_batch: int = 1  # --timing batch=B: also throughput at batch B (1: batch-1 latency only)
    chunks: int = DEFAULT_CHUNKS  # with timing_batch > 1: chunks of B items per case (at most what the items hold)
    chunk_rounds: int = DEFAULT_CHUNK_ROUNDS  # interleaved rounds per chunk

    def cases(self) -> list[GridCase]:
        out = []
        for model in self.models:
            for bench in self.benches:
                out.append(GridCase(model, bench))
                for method in self.methods[1:]:
                    ks = self.points.get(method, (None,))
                    out += [GridCase(model, bench, method, k, st) for k in ks for st in self.stage_sets]
        return out

    def policy_path(self, case: GridCase) -> Path:
        return self.policy_dir / f"{slug(case.model)}_{case.bench}_{case.method}.json"

    def missing_policy(self, case: GridCase) -> bool:
        return case.method != "dense" and needs_search(case.method) and not self.policy_path(case).is_file()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["policy_dir"] = str(self.policy_dir)
        d["stage_sets"] = [list(s) for s in self.stage_sets]
        d["points"] = {m: list(v) for m, v in self.points.items()}
        return d


def _count(value: int | None, what: str, zero_means_all: bool) -> int | None:
    if value is None:
        return None
    if value < 0 or (value == 0 and not zero_means_all):
        raise UserError(f"--{what} {value} is out of range", f"pass a whole number >= {0 if zero_means_all else 1}")
    return value


def selection_from_options(get, main_job: bool) -> GridSelection:
    """Read and check the grid options (`get` is pytest's config.getoption)."""
    models = _names(get("--models") or DEFAULT_MODEL, "models")
    for m in models:
        check_model_name(m)
    benches_text = get("--benches") or (MAIN_BENCHES if main_job else ",".join(BENCHMARKS))
    benches = list(BENCHMARKS) if benches_text.strip() == "all" else _names(benches_text, "benches")
    for b in benches:
        check_bench(b)
    methods = parse_methods(get("--methods") or ("all" if main_job else SMOKE_METHODS))
    points_text = get("--points")
    points = parse_points(points_text, methods)
    if not main_job and points_text is None:
        points.update({m: v for m, v in SMOKE_POINTS.items() if m in points})
    limit = _count(get("--limit"), "limit", zero_means_all=True)
    limit = (MAIN_LIMIT if main_job else SMOKE_LIMIT) if limit is None else (limit or None)
    timed = _count(get("--timed"), "timed", zero_means_all=True)
    if timed is None:
        timed = min(limit or MAIN_TIMED, MAIN_TIMED) if main_job else SMOKE_TIMED
    timed = timed or None
    batch = _count(get("--batch-size"), "batch-size", zero_means_all=False)
    dtype, numerics = get("--dtype"), get("--numerics")
    check_numerics(DEFAULT_MODEL, dtype, numerics)  # checks the names and their pair
    search_limit = _count(get("--search-limit"), "search-limit", zero_means_all=False)
    rounds = _count(get("--rounds"), "rounds", zero_means_all=False) or (MAIN_ROUNDS if main_job else DEFAULT_ROUNDS)
    timing_batch = parse_timing(get("--timing") or "latency")
    if timing_batch > 1 and limit is not None and limit < timing_batch:
        raise UserError(f"--timing batch={timing_batch} needs at least {timing_batch} items per benchmark, "
                        f"--limit is {limit}", f"raise --limit to {timing_batch} or more (3 chunks give a CI)")
    throughput = {"timing_batch": timing_batch,
                  "chunks": _count(get("--chunks"), "chunks", zero_means_all=False) or DEFAULT_CHUNKS,
                  "chunk_rounds": _count(get("--chunk-rounds"), "chunk-rounds", zero_means_all=False)
                  or DEFAULT_CHUNK_ROUNDS}
    return GridSelection(**throughput,models=models, benches=benches, methods=methods, points=points,
                         stage_sets=parse_stage_sets(get("--stages")), limit=limit, timed=timed, rounds=rounds,
                         batch_size=batch or 8, dtype=dtype, device=check_device(get("--device")), numerics=numerics,
                         policy_dir=Path(get("--policy-dir")), search_missing=not get("--no-search"),
                         search_limit=search_limit, main_job=main_job)
