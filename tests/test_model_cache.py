"""First loads of an embedded model are safe under concurrency: one process converts (under a lock,
into a temporary sibling renamed into place whole), the others wait and read the finished folder."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from litestage_bench.engine import models

ROOT = Path(__file__).resolve().parents[1]
FILES = {"config.json": "{}", "tokenizer.json": "tok", "model.safetensors": "weights"}

# A child process: the real ensure_converted, with the GGUF chunk and the de-quantisation faked; the
# fake writes config.json first and the rest slowly (as save_pretrained does), so that a reader of a
# half-written folder would see config.json without the tokenizer.
CHILD = r"""
import dataclasses, json, sys, time
from pathlib import Path
from litestage_bench.engine import models

fake, sha, barrier, me = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
FILES = json.loads(sys.argv[5])
models.chunk_files = lambda spec: [fake]

def slow_dequantise(gguf, out):
    out.mkdir()
    for name, text in FILES.items():
        (out / name).write_text(text)
        time.sleep(0.6)

models._dequantise = slow_dequantise
spec = dataclasses.replace(models.MODELS["smollm2-135m"], sha256=sha, size=None)
(barrier / me).touch()
deadline = time.time() + 120
while len(list(barrier.iterdir())) < 2:  # start both loads together, whatever the import times
    assert time.time() < deadline, "the other process never started"
    time.sleep(0.005)
entered = time.time()
target, converted = models.ensure_converted(spec)
done = time.time()
got = {p.name: p.read_text() for p in target.iterdir()}
assert got == FILES, got
print(json.dumps({"converted": converted, "entered": entered, "done": done, "target": str(target)}))
"""


def _fake_gguf(tmp_path: Path) -> tuple[Path, str]:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 60)
    return fake, hashlib.sha256(fake.read_bytes()).hexdigest()


def test_two_processes_on_an_empty_cache(tmp_path):
    fake, sha = _fake_gguf(tmp_path)
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, models.CACHE_ENV: str(cache), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(fake), sha, str(barrier), str(i), json.dumps(FILES)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["converted"] for r in reports) == [False, True]
    converter = next(r for r in reports if r["converted"])
    waiter = next(r for r in reports if not r["converted"])
    assert waiter["entered"] < converter["done"], "the loads did not overlap"
    assert "waiting for another process" in outs[reports.index(waiter)][1]
    target = Path(converter["target"])
    assert target.parent.parent == cache
    assert {p.name: p.read_text() for p in target.iterdir()} == FILES
    # nothing but the finished folder and its lock file is left
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, f".{target.name}.lock"])


def _spec(tmp_path, monkeypatch) -> models.ModelSpec:
    fake, sha = _fake_gguf(tmp_path)
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "chunk_files", lambda spec: [fake])
    return dataclasses.replace(models.MODELS["smollm2-135m"], sha256=sha, size=None)


def test_unfinished_folder_and_stale_temp_are_replaced(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch)
    calls = []

    def dequantise(gguf, out):
        calls.append(gguf)
        out.mkdir()
        for name, text in FILES.items():
            (out / name).write_text(text)

    monkeypatch.setattr(models, "_dequantise", dequantise)
    target = models._converted_dir(spec)
    target.mkdir(parents=True)
    (target / "tokenizer.json").write_text("half")  # no config.json: never finished
    stale = target.with_name(f".{target.name}.tmp-killed")
    stale.mkdir()
    assert models.ensure_converted(spec) == (target, True)
    assert {p.name: p.read_text() for p in target.iterdir()} == FILES
    assert not stale.exists()
    assert models.ensure_converted(spec) == (target, False) and len(calls) == 1


def test_failed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch)

    def broken(gguf, out):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(models, "_dequantise", broken)
    with pytest.raises(RuntimeError):
        models.ensure_converted(spec)
    target = models._converted_dir(spec)
    assert not target.exists() and not list(target.parent.glob(".*.tmp-*"))
