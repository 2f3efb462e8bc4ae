"""The package's layers: every import runs downward (core < engine < records < evaluation < methods <
studies < grid and the CLI), so there is no import circle, and the package imports no method
plugin by name (the baselines are entry points)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "litestage_bench"
RANK = {"core": 0, "engine": 1, "records": 2, "evaluation": 3, "methods": 4, "baselines": 5, "studies": 6,
        "grid": 7, "cli": 7, "__main__": 8}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name (litestage_bench.X... or baselines...); None outside."""
    parts = module.split(".")
    if parts[0] == "baselines":
        return "baselines"
    if parts[0] != "litestage_bench" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANK else None


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, type-checking ones included."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [node.module] if node.module else [a.name for a in node.names]
                out += [(node.lineno, ".".join(base + [n])) for n in names]
            elif node.module:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "baselines").glob("*.py"))


def test_imports_only_run_downward():
    upward = []
    for path in sources():
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mine = layer_of(module)
        if mine is None:  # the package's face (litestage_bench/__init__.py)
            continue
        for line, target in imports_of(path):
            theirs = layer_of(target)
            if theirs is not None and RANK[theirs] > RANK[mine]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target} ({theirs})")
    assert not upward, "\n".join(upward)


def test_the_layout_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "litestage_bench" / "engine" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ..records.results import ItemResult\n")
    imported = [t for _, t in imports_of(bad, tmp_path)]
    assert imported == ["litestage_bench.records.results"]
    assert RANK[layer_of(imported[0])] > RANK["engine"]


def test_no_module_of_the_package_names_a_baseline():
    named = [f"{path.relative_to(ROOT)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
             for line, target in imports_of(path) if layer_of(target) == "baselines"]
    assert not named, named
