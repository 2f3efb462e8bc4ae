"""The benchmark grid behind `pytest --benchmark-only`: cases, their results, the comparative table.

Each case is model x benchmark x method. Cases of one (model, benchmark) run on the same items in
the same session; after the run every method's speedup is its dense latency ratio on those items
(median per question), and one record per case plus a markdown table are written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .methods import METHODS, Method, load_plugins, make_method
from .plan import SkipPlan
from .report import results_table
from .results import ItemResult, ResultRecord, build_record, write_record, write_text_atomic

# Methods that cannot run without a policy file the grid does not have.
NEEDS_POLICY = {"plan"}


def runs_without_inputs(name: str) -> bool:
    """False for methods that need a policy file, a search or a budget (`k`), which the grid
    does not pass yet (budget points and committed policies arrive with the full grid)."""
    factory = METHODS[name]
    return not (name in NEEDS_POLICY or getattr(factory, "needs_search", False) or getattr(factory, "needs_k", False))


def grid_methods(selection: str) -> list[str]:
    """Method names for the grid: 'all' = every registered method that runs without further inputs."""
    load_plugins()
    names = sorted(METHODS) if selection == "all" else [m.strip() for m in selection.split(",") if m.strip()]
    names = [n for n in names if not (selection == "all" and not runs_without_inputs(n))]
    # dense first: every other method's speedup is measured against it
    return sorted(names, key=lambda n: (n != "dense", n))


class StageRestricted(Method):
    """A method whose plan only applies in the selected stages (others run dense)."""

    def __init__(self, inner: Method, stages: tuple[str, ...]) -> None:
        self.inner, self.stages, self.name = inner, stages, inner.name

    def plan(self, facts):
        plan = self.inner.plan(facts)
        return SkipPlan({s: p for s, p in plan.stages.items() if s in self.stages}, plan.name)

    def token_callback(self, stage):
        return self.inner.token_callback(stage) if stage in self.stages else None

    def describe(self):
        return {**self.inner.describe(), "stages": list(self.stages)}


def grid_method(name: str, stages: tuple[str, ...]) -> Method:
    return StageRestricted(make_method(name), stages)


@dataclass
class GridCase:
    model: str
    bench: str
    method: str
    items: list[ItemResult]
    policy: dict
    config: dict
    command: str


@dataclass
class GridStore:
    """Collects finished cases during a pytest session."""

    cases: list[GridCase] = field(default_factory=list)

    def add(self, case: GridCase) -> None:
        self.cases.append(case)

    def records(self) -> list[ResultRecord]:
        dense = {(c.model, c.bench): c for c in self.cases if c.method == "dense"}
        out = []
        for c in self.cases:
            base = dense.get((c.model, c.bench))
            same_items = base is not None and [i.id for i in base.items] == [i.id for i in c.items]
            # a non-dense case is compared with dense on the same items (fidelity, McNemar, speedup CI)
            reference = base.items if same_items and c.method != "dense" else None
            out.append(build_record(model=c.model, benchmark=c.bench, split="eval", method=c.method,
                                    policy=c.policy, answer_rule=c.config["answer_rule"], items=c.items,
                                    command=c.command, config=c.config, dense_items=reference,
                                    speedup=1.0 if c.method == "dense" else None))
        return out

    def write(self, folder: str | Path) -> tuple[str, list[Path]]:
        records = self.records()
        folder = Path(folder)
        paths = [write_record(folder / f"{r.model}_{r.benchmark}_{r.method}.json", r) for r in records]
        table = results_table(records)
        command = records[0].command if records else ""
        write_text_atomic(folder / "table.md", f"# Benchmark grid\n\nProduced by `{command}`.\n\n{table}\n")
        return table, paths
