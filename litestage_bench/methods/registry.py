"""The method interface and registry: every skipping method hands the executor a plan.

A method turns (model facts, optional policy file) into a ``SkipPlan`` plus optional per-stage
token callbacks (generation early exit). Methods are plugins: every entry point of the group
``litestage_bench.methods`` (core/plugins.py) names a method class or factory, registered under the
entry point's name; LiteStage and the baselines are declared so in the suite's pyproject.toml. A
module may also register with ``@register("name")`` (and its search with ``@register_search``)
when it is imported. The CLI and the benchmark grid look methods up by name, so a new method needs
no change anywhere in the suite.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..core.errors import UserError
from ..core.plugins import METHODS_GROUP, load_group
from ..core.schema import Checker
from ..engine.method import Method, ModelFacts
from ..engine.plan import DENSE, SkipPlan

MethodFactory = Callable[[dict[str, Any] | None], Method]
METHODS: dict[str, MethodFactory] = {}
IN_REGISTRY = ("dense", "plan")  # defined below, not plugins


def register(name: str) -> Callable[[MethodFactory], MethodFactory]:
    def deco(factory: MethodFactory) -> MethodFactory:
        METHODS[name] = factory
        return factory
    return deco


# name -> search(session, bench, args, reasoner config, command, log) -> policy dict
SearchFn = Callable[..., dict[str, Any]]
SEARCHES: dict[str, SearchFn] = {}


def register_search(name: str) -> Callable[[SearchFn], SearchFn]:
    """Register the offline search / calibration of a method (`litestage-bench search --method NAME`)."""
    def deco(fn: SearchFn) -> SearchFn:
        SEARCHES[name] = fn
        return fn
    return deco


def load_policy(path: str | Path | None) -> dict[str, Any] | None:
    """Read a policy JSON file; UserError for a missing or malformed file."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"policy file {path} does not exist",
                        "pass the file written by `litestage-bench search --out FILE`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"policy file {path} is not valid JSON (line {err.lineno}: {err.msg})",
                        "regenerate it with `litestage-bench search`") from err
    Checker(f"policy file {path}", "regenerate it with `litestage-bench search`").obj(data, "the top level")
    data.setdefault("path", str(path))
    return data


def make_method(name: str, policy: dict[str, Any] | None = None) -> Method:
    """Instantiate a registered method by name."""
    load_plugins()
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'", f"use one of: {', '.join(sorted(METHODS))}")
    return METHODS[name](policy)


def load_plugins() -> None:
    """Import every method entry point and register it under its name (imported once per process;
    the suite's own methods are entry points too)."""
    for name, factory in load_group(METHODS_GROUP).items():
        if name in IN_REGISTRY:
            raise UserError(f"method plugin {name!r} takes the name of a method of the suite",
                            "rename the entry point in the plugin's pyproject.toml")
        METHODS.setdefault(name, factory)  # a module may have registered itself on import


@register("dense")
class Dense(Method):
    """Nothing skipped: the reference every speedup is measured against."""

    name = "dense"

    def __init__(self, policy: dict[str, Any] | None = None) -> None:
        pass

    def plan(self, facts: ModelFacts) -> SkipPlan:
        return DENSE


class StaticPlanMethod(Method):
    """A method defined by a fixed plan (a plan JSON file, or one built in code)."""

    def __init__(self, plan: SkipPlan) -> None:
        self._plan = plan
        self.name = plan.name

    def plan(self, facts: ModelFacts) -> SkipPlan:
        return self._plan

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "plan": self._plan.to_dict()}


@register("plan")
def _plan_from_policy(policy: dict[str, Any] | None) -> Method:
    """`--method plan --policy PLAN.json`: run any serialised SkipPlan."""
    if policy is None:
        raise UserError("method 'plan' needs a plan file", "pass --policy PLAN.json (a SkipPlan in JSON)")
    try:
        return StaticPlanMethod(SkipPlan.from_dict(policy))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"policy {policy.get('path', '?')} is not a valid skip plan ({err})",
                        "see litestage_bench/engine/plan.py for the format") from err
