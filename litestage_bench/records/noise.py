"""The numeric noise floor as records see it: which measured floor applies to a record, and the
compact per-item form (answers, output hashes) that noise-floor comparisons count flips on.
``litestage_bench.studies.noise_floor`` measures the floors; this module only reads and compares."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..engine.plan import STAGES
from .items import ItemResult

NOISE_FLOOR_ENV = "LITESTAGE_NOISE_FLOOR"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "results" / "numerics"


def exact_numerics(numerics: str | None, device: str | None) -> bool:
    """Whether answers are reproducible item for item: float32 on a CPU had 0 answer flips in every
    noise-floor comparison (noise_floor.py: threads, batching, KV reuse, another CPU)."""
    return numerics == "float32" and str(device or "cpu").split(":")[0] == "cpu"


def noise_floor_for(model: str, dtype: str, device: str = "cpu") -> dict:
    """The measured noise floor that applies to a record of this model and numerics (passed as
    `dtype`: float32, bfloat16, bf16-matmul), or why none does."""
    base = {"model": model, "dtype": dtype, "device": device, "measured": False}
    if not str(device).startswith("cpu"):
        return {**base, "note": "not measured on this device (the noise floor is measured on CPU only)"}
    path = Path(os.environ.get(NOISE_FLOOR_ENV, DEFAULT_DIR / "noise_floor.json"))
    try:
        summary = json.loads(path.read_text())["by_config"]
    except (OSError, ValueError, KeyError):
        summary = {}
    entry = summary.get(f"{model}|{dtype}")
    if entry is None:
        return {**base, "note": f"no measurement for {model} {dtype}: run `python -m litestage_bench.studies.noise_floor "
                                f"--model {model} --numerics {dtype}`"}
    return {**base, **entry, "measured": True, "source": "results/numerics/noise_floor.json"}


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def compact(item: ItemResult) -> dict:
    """What a noise-floor comparison needs of an item: its answers and a hash of each stage output."""
    return {"id": item.id, "answer": item.answer, "prediction": item.prediction,
            "by_rule": item.predictions_by_rule, "outputs": {s: _digest(item.outputs.get(s, "")) for s in STAGES}}


def compare(reference: list[dict], other: list[dict]) -> dict:
    """Answer flips and identical outputs of `other` against `reference` (matched by id)."""
    ref = {r["id"]: r for r in reference}
    pairs = [(ref[o["id"]], o) for o in other if o["id"] in ref]
    n = len(pairs)
    flips = sum(a["prediction"] != b["prediction"] for a, b in pairs)
    rules = sorted({k for a, _ in pairs for k in a["by_rule"]})
    return {"n": n, "answer_flips": flips, "answer_flip_rate": flips / n if n else None,
            "identical_outputs": sum(a["outputs"] == b["outputs"] for a, b in pairs) / n if n else None,
            "identical_recall": sum(a["outputs"]["recall"] == b["outputs"]["recall"] for a, b in pairs) / n if n else None,
            "flips_by_rule": {r: sum(a["by_rule"].get(r) != b["by_rule"].get(r) for a, b in pairs) for r in rules},
            "accuracy_reference": sum(a["prediction"] == a["answer"] for a, _ in pairs) / n if n else None,
            "accuracy_variant": sum(b["prediction"] == b["answer"] for _, b in pairs) / n if n else None}
