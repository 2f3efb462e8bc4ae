"""Build the packaged copy of the benchmarks (litestage_bench/data/) from the original files.

    python scripts/build_packaged_data.py --data-dir /work/shared/data

Reads the originals through the suite's own local parsers (``load_split`` on the folder), keeps
only the fields the suite uses, and writes deterministic files: gzip with mtime 0 and no file
name, JSON with sorted keys. ``--check`` builds into a temporary folder and exits 1 when the
committed copy differs.
"""
from __future__ import annotations

import argparse
import filecmp
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litestage_bench.evaluation import benchmarks as B  # noqa: E402
from litestage_bench.evaluation import packaged  # noqa: E402

# Provenance, from shared/data/README.md (the data folder's own README).
TINYTHINKER = "shengminp/TinyThinker @ c5bf33773e7ec5f859b7196fc3632fff26ea683c"
SOURCES = {
    "obqa": {
        "name": "OpenBookQA (Mihaylov et al. 2018, AllenAI)",
        "license": "Apache-2.0",
        "license_note": "AllenAI's OpenBookQA repository is Apache-2.0 (the Hugging Face card says unknown)",
        "origin": f"{TINYTHINKER}: datasets/obqa/original/{{test,dev}}.jsonl (the official 'Main' files)",
    },
    "csqa": {
        "name": "CommonsenseQA (Talmor et al. 2019)",
        "license": "MIT",
        "license_note": "MIT, per the Hugging Face card tau/commonsense_qa",
        "origin": f"{TINYTHINKER}: datasets/csqa/original/{{dev,train}}_rand_split.jsonl (the official files)",
    },
    "strategyqa": {
        "name": "StrategyQA (Geva et al. 2021)",
        "license": "MIT",
        "license_note": "MIT, Copyright (c) 2021 Elad Segal (eladsegal/strategyqa LICENSE)",
        "origin": "Ashok080/AOS-100-Agents @ a4028beb69e774f03257d291bbc5b8485f286d05: strategyqa_train.json "
                  "(the official labelled train file)",
    },
}
SPLIT_NOTES = {
    "strategyqa": f"eval / calib: the seeded split of the labelled questions (benchmarks.strategyqa_split, "
                  f"seed {B.STRATEGYQA_SPLIT_SEED}, eval {B.STRATEGYQA_EVAL_SIZE} items)",
}
DEMOS = {
    "name": "TinyThinker hand-written few-shot demos",
    "license": "MIT",
    "license_note": "MIT, Copyright (c) 2024 Shengmin Piao (tinythinker/LICENSE, copied alongside)",
    "origin": f"{TINYTHINKER}: datasets/<bench>/prompt/<bench>_cot.json",
    "license_file": "tinythinker/LICENSE",
}


def _sha256(path: Path) -> str:
    return packaged.sha256_file(path)


def _write_json_gz(path: Path, splits: dict) -> str:
    """Write the splits gzipped; return the sha256 of the uncompressed JSON (``items_sha256``)."""
    raw = packaged.canonical_json(splits)
    # mtime=0 and gzip.compress (which writes no file name) keep the bytes reproducible
    path.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    return hashlib.sha256(raw).hexdigest()


def build(data_dir: Path, out: Path) -> dict:
    """Write the packaged copy into ``out`` (emptied first) and return its manifest."""
    if out.exists():
        if any(out.iterdir()) and not (out / packaged.MANIFEST).is_file():
            raise SystemExit(f"error: {out} is not empty and holds no {packaged.MANIFEST}: not a packaged copy "
                             f"to replace -- fix: pass an empty or new --out folder")
        shutil.rmtree(out)
    (out / "tinythinker").mkdir(parents=True)
    manifest = {
        "schema_version": packaged.MANIFEST_VERSION,
        "built_by": "scripts/build_packaged_data.py",
        "item_fields": list(packaged.ITEM_FIELDS),
        "benchmarks": {},
        "demos": {},
        "other_files": {},
    }
    for bench in B.BENCHMARKS:
        splits, split_info = {}, {}
        for split in B.SPLITS:
            questions = B.load_split(bench, split, data_dir=data_dir)
            splits[split] = [packaged.item_dict(q) for q in questions]
            src = B.LOCAL_FILES[bench][split]
            split_info[split] = {"items": len(questions), "source_file": src,
                                 "source_sha256": _sha256(data_dir / src)}
        rel = f"{bench}.json.gz"
        items_sha256 = _write_json_gz(out / rel, splits)
        manifest["benchmarks"][bench] = {
            **SOURCES[bench], "file": rel, "sha256": _sha256(out / rel), "bytes": (out / rel).stat().st_size,
            "items_sha256": items_sha256,
            "splits": split_info, **({"split_note": SPLIT_NOTES[bench]} if bench in SPLIT_NOTES else {}),
        }
    shutil.copyfile(data_dir / "tinythinker" / "LICENSE", out / "tinythinker" / "LICENSE")
    for bench in B.BENCHMARKS:
        rel = f"tinythinker/{bench}_cot.json"
        shutil.copyfile(data_dir / rel, out / rel)  # byte for byte: the demo parser reads the original format
        manifest["demos"][bench] = {
            **DEMOS, "file": rel, "sha256": _sha256(out / rel), "bytes": (out / rel).stat().st_size,
            "items": len(json.loads((out / rel).read_text(encoding="utf-8"))),
        }
    for rel in ("tinythinker/LICENSE", "LICENSES.md"):
        if rel == "LICENSES.md":
            (out / rel).write_text(_licenses_md(manifest), encoding="utf-8")
        manifest["other_files"][rel] = {"sha256": _sha256(out / rel), "bytes": (out / rel).stat().st_size}
    (out / packaged.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return manifest


def _licenses_md(manifest: dict) -> str:
    rows = [f"| `{e['file']}` | {e['name']} | {e['license_note']} | {e['origin']} |"
            for group in ("benchmarks", "demos") for e in manifest[group].values()]
    return "\n".join([
        "# Licences of the packaged data",
        "",
        "Built by `scripts/build_packaged_data.py` from the original files; only the fields the suite uses",
        "(id, question text, options, labels, answer) of the evaluation and calibration splits.",
        "sha256 and item counts: `MANIFEST.json`.",
        "",
        "| file | data | licence | source |",
        "|---|---|---|---|",
        *rows,
        "",
        "The MIT licence text is in `tinythinker/LICENSE`; it applies to CommonsenseQA and StrategyQA with",
        "their own copyright lines above. Apache-2.0: https://www.apache.org/licenses/LICENSE-2.0",
        "",
    ])


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get(B.DATA_DIR_ENV),
                    help=f"folder with the original files (default: ${B.DATA_DIR_ENV})")
    ap.add_argument("--out", type=Path, default=packaged.PACKAGED_DIR, help="output folder (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="build into a temp folder; exit 1 if --out differs")
    args = ap.parse_args(argv)
    if not args.data_dir or not Path(args.data_dir).is_dir():
        print(f"error: no data folder ({args.data_dir!r}) -- fix: pass --data-dir or set {B.DATA_DIR_ENV}",
              file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(data_dir, Path(tmp) / "data")
            same = _same_tree(Path(tmp) / "data", args.out)
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    manifest = build(data_dir, args.out)
    total = 0
    for group in ("benchmarks", "demos"):
        for bench, entry in manifest[group].items():
            total += entry["bytes"]
            counts = ", ".join(f"{s} {v['items']}" for s, v in entry.get("splits", {}).items())
            print(f"{entry['file']:<32} {entry['bytes']:>9,} bytes  {counts or str(entry['items']) + ' demos'}")
    print(f"total {total:,} bytes in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
