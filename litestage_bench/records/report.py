"""Comparative tables and regression comparison of records; the Pareto plot (``pareto_plot``) is drawn
in pareto.py and importable from here."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Iterable

from tabulate import tabulate

from ..core.errors import UserError
from . import metrics, noise, stats
from .fidelity import same_answer
from .item_changes import count, id_list, item_changes
from .pareto import pareto_plot  # noqa: F401  (drawn in pareto.py; imported from here by callers)
from .results import ResultRecord

STAGES = ("recall", "analyze", "summarize")


def _searched_label(policy: dict) -> str:
    """A searched policy's label from what the record says about it: target, the ablation options
    that differ from the defaults, and whether early exit ran (litestage-acc4, -agree0.9-no-exit, ...)."""
    target, opts = policy.get("target") or {}, policy.get("options") or {}
    parts = [str(policy["name"])]
    if target.get("kind") == "accuracy":
        parts.append(f"acc{target.get('tolerance_points'):g}")
    elif target.get("kind") == "agreement":
        parts.append(f"agree{target.get('min_agreement'):g}")
    parts += [opts[k] for k, default in (("budget", "stagewise"), ("granularity", "sublayer"), ("ranking", "cosine"))
              if opts.get(k, default) != default]
    if policy.get("early_exit_enabled") is False or opts.get("early_exit") is False:
        parts.append("no-exit")
    return "-".join(parts)


def policy_name(policy: dict | str | None) -> str:
    """Short policy label: a searched policy's label (target and ablations), else the dict's
    ``name``, else a policy file's stem, else ``-``."""
    if isinstance(policy, dict):
        if policy.get("name") and isinstance(policy.get("target"), dict):
            return _searched_label(policy)
        if policy.get("name"):
            return str(policy["name"])
        for key in ("path", "file"):
            if isinstance(policy.get(key), str) and policy[key]:
                return Path(policy[key]).stem
        return "-"
    if isinstance(policy, str) and policy:
        return Path(policy).stem
    return "-"


def fmt_num(x: float | None, fmt: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt)


def fmt_stages(d: dict[str, float], fmt: str) -> str:
    """``R/A/S`` values in stage order (``-`` for a stage the record lacks)."""
    return "/".join(fmt_num(d.get(s), fmt) for s in STAGES)


def _accuracy(r: ResultRecord) -> str:
    lo, hi = r.accuracy_ci95
    return f"{fmt_num(r.accuracy, '.3f')} [{fmt_num(lo, '.3f')}, {fmt_num(hi, '.3f')}]"


def _speedup(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def speedup_ci_cell(r: ResultRecord) -> str:
    """``1.23x [1.10, 1.35]``; ``1.23x [no CI: 2 timed items, 3 needed]`` when the interval was
    refused (timing.t_gm_ci95); just the point when the record has no interval."""
    point = _speedup(r.speedup)
    if point == "-" or r.speedup_ci95 is None:
        return point
    refused = (r.timing or {}).get("speedup_ci95_refused")
    if refused:
        return f"{point} [no CI: {refused}]"
    lo, hi = r.speedup_ci95
    return f"{point} [{fmt_num(lo, '.2f')}, {fmt_num(hi, '.2f')}]"


THROUGHPUT_COLUMN = "batch-B speedup [95% CI] (fewer x waiting x cheaper)"


def throughput_cell(r: ResultRecord) -> str:
    """``1.41x [1.30, 1.52] b8 (1.9 x 0.81 x 0.92)``: the throughput speedup at batch B with its CI and
    its factors fewer tokens x less waiting x cheaper tokens (records/throughput.py); ``-`` without one."""
    t = (r.timing or {}).get("throughput")
    if not t:
        return "-"
    point = _speedup(t.get("throughput_speedup"))
    lo, hi = t.get("throughput_speedup_ci95") or (None, None)
    ci = f"no CI: {t['ci95_refused']}" if t.get("ci95_refused") else f"{fmt_num(lo, '.2f')}, {fmt_num(hi, '.2f')}"
    total = t.get("decomposition", {}).get("total", {})
    factors = " x ".join(fmt_num(total.get(k), ".2f") for k in ("token_factor", "waiting_factor", "per_token_factor"))
    return f"{point} [{ci}] b{t.get('batch_size')} ({factors})"


# timing.decompose: speedup = fewer tokens x cheaper tokens; then each phase's seconds per token
DECOMPOSITION_COLUMNS = ["fewer tokens x", "cheaper tokens x", "prefill s/tok x", "decode s/tok x"]
_DECOMPOSITION_KEYS = ("token_factor", "per_token_factor", "prefill_per_token_factor", "decode_per_token_factor")


def decomposition_cells(r: ResultRecord, part: str = "total") -> list[str]:
    """The record's speedup decomposition for a stage or ``total`` (``-`` where not measured)."""
    row = (r.speedup_decomposition or {}).get(part) or {}
    return [fmt_num(row.get(k), ".2f") for k in _DECOMPOSITION_KEYS]


def drafting_cell(r: ResultRecord, stage: str = "total") -> str:
    """A lossless (drafted) record's drafting: tokens per verify step and acceptance rate, with the
    items whose outputs equal dense's for the whole record; ``-`` for a record that drafted nothing."""
    spec = (r.speculative or {}).get(stage)
    if not spec:
        return "-"
    cell = f"{fmt_num(spec['tokens_per_step'], '.2f')} tok/verify, acc {fmt_num(spec['acceptance_rate'], '.2f')}"
    fid = r.fidelity or {}
    if stage == "total" and "identical_outputs" in fid:
        cell = f"identical {fid['identical_outputs']}/{fid['n']}; {cell}"
    return cell


def _fid(r: ResultRecord, key: str) -> float | None:
    return r.fidelity.get(key) if r.fidelity else None


def flips_cell(r: ResultRecord) -> str:
    """Answer flips vs dense as ``-correct_to_wrong/+wrong_to_correct``."""
    if not r.fidelity:
        return "-"
    return f"-{r.fidelity.get('correct_to_wrong', 0)}/+{r.fidelity.get('wrong_to_correct', 0)}"


def fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _fidelity_cells(r: ResultRecord) -> list[str]:
    """agreement, flips, answer KL, McNemar p (``-`` for dense and records without a comparison)."""
    return [fmt_num(_fid(r, "agreement"), ".3f"), flips_cell(r), fmt_num(_fid(r, "answer_kl"), ".4f"), fmt_p(r.mcnemar_p)]


def _threads(threads: object) -> str:
    if isinstance(threads, int):
        return f"{threads} thread{'' if threads == 1 else 's'}"
    return f"threads {threads}"  # a description such as "1 (reference) vs 2"


def noise_floor_note(r: ResultRecord) -> str | None:
    """``noise floor (bfloat16, 1 thread): 2.0% answer flips over 100 items``, the floor's own
    ``note`` when it was not measured, or ``None`` when the record carries no noise floor.

    Reads ``answer_flip_rate``, ``n_items``, ``dtype``, ``threads`` and ``note`` (as
    ``records.noise.noise_floor_for`` writes them), falling back to the record's own dtype and threads.
    """
    nf = r.noise_floor
    if not nf:
        return None
    threads = nf.get("threads", r.threads)
    where = ", ".join(x for x in (nf.get("dtype") or r.dtype, None if threads is None else _threads(threads)) if x)
    head = f"noise floor ({where})" if where else "noise floor"
    rate = nf.get("answer_flip_rate")
    if not isinstance(rate, (int, float)):
        return f"{head}: {nf['note']}" if nf.get("note") else None
    n = nf.get("n_items")
    return f"{head}: {rate:.1%} answer flips" + (f" over {n} items" if n else "")


def noise_floor_notes(records: list[ResultRecord]) -> list[str]:
    """The distinct noise-floor notes of ``records``, in table order."""
    notes: list[str] = []
    for r in sorted(records, key=_sort_key):
        note = noise_floor_note(r)
        if note and note not in notes:
            notes.append(note)
    return notes


def _with_notes(table: str, records: list[ResultRecord]) -> str:
    notes = noise_floor_notes(records)
    return table + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "")


def _rules(r: ResultRecord) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in r.answer_rule_counts.items())
    return f"{r.answer_rule} ({counts})" if counts else r.answer_rule


def _sort_key(r: ResultRecord) -> tuple:
    return (r.model, r.benchmark, r.method, policy_name(r.policy))


def results_table(records: list[ResultRecord], fmt: str = "github") -> str:
    """One row per record, sorted by model, benchmark, method; per-stage columns are R/A/S.

    The comparison with dense (agreement, flips ``-c2w/+w2c``, answer KL, McNemar p, retention) is
    ``-`` for dense and for records without one. Noise-floor notes follow the table when records carry one.
    """
    headers = [
        "model", "bench", "method", "policy", "n", "accuracy [95% CI]", "speedup [95% CI]", *DECOMPOSITION_COLUMNS,
        THROUGHPUT_COLUMN,
        "agreement", "flips -c2w/+w2c", "answer KL", "McNemar p", "retention", "latency s/q",
        "stage s R/A/S", "tokens R/A/S", "cost frac R/A/S", "answer rule (counts)", "lossless drafting",
    ]
    rows = [
        [
            r.model, r.benchmark, r.method, policy_name(r.policy), r.n, _accuracy(r), speedup_ci_cell(r),
            *decomposition_cells(r), throughput_cell(r), *_fidelity_cells(r), fmt_num(r.retention, ".2f"),
            fmt_num(r.latency_s, ".3f"), fmt_stages(r.stage_latency_s, ".3f"), fmt_stages(r.tokens, ".1f"),
            fmt_stages(r.executed_cost_fraction, ".2f"), _rules(r), drafting_cell(r),
        ]
        for r in sorted(records, key=_sort_key)
    ]
    return _with_notes(tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True), records)


def rules_table(records: list[ResultRecord], fmt: str = "github") -> str:
    """Accuracy of every answer rule on the same generations, beside a one-step (no reasoning)
    answer on the same items when the record has one (`run --one-step`)."""
    rows = []
    for r in sorted(records, key=_sort_key):
        one_step = r.extra.get("one_step_accuracy", {})
        rows.append([r.model, r.benchmark, r.method, policy_name(r.policy), r.n,
                     *(fmt_num(r.accuracy_by_rule.get(rule), ".3f") for rule in ("regex", "letter", "cloze")),
                     *(fmt_num(one_step.get(rule, {}).get("accuracy"), ".3f") for rule in ("letter", "cloze"))])
    headers = ["model", "bench", "method", "policy", "n", "3-stage regex", "3-stage letter", "3-stage cloze",
               "one-step letter", "one-step cloze"]
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def _label(r: ResultRecord) -> str:
    pol = policy_name(r.policy)
    return r.method if pol in ("-", r.method) else f"{r.method} ({pol})"


def versus_table(records: list[ResultRecord], vs: ResultRecord, fmt: str = "github") -> str:
    """Every record against ``vs`` on the items both hold (same model and benchmark): accuracy of
    each, the paired difference with its 95% CI, the exact McNemar p of the two, how often their
    answers agree, and the ratio of their speedups over dense.

    Each speedup was measured against dense in its own run, so the ratio of speedups is indicative,
    not a side-by-side timing. Records of another model or benchmark, ``vs`` itself, and records
    sharing no item id with ``vs`` are left out.
    """
    ref = {it.id: it for it in vs.items}
    headers = ["model", "bench", "record", "n paired", f"accuracy (vs {_label(vs)})",
               "paired d [95% CI] (+gained/-lost)", "McNemar p", "answer agreement", "speedup ratio"]
    rows = []
    for r in sorted(records, key=_sort_key):
        if r is vs or (r.model, r.benchmark) != (vs.model, vs.benchmark):
            continue
        pairs = [(it, ref[it.id]) for it in r.items if it.id in ref]
        if not pairs:
            continue
        mine, theirs = [a.correct for a, _ in pairs], [b.correct for _, b in pairs]
        agree = sum(same_answer(a, b) for a, b in pairs) / len(pairs)
        ratio = r.speedup / vs.speedup if r.speedup and vs.speedup else None
        rows.append([
            r.model, r.benchmark, _label(r), len(pairs),
            f"{sum(mine) / len(pairs):.3f} ({sum(theirs) / len(pairs):.3f})",
            paired_cell(mine, theirs), fmt_p(stats.mcnemar_exact_p(mine, theirs)), f"{agree:.3f}", _speedup(ratio),
        ])
    if not rows:
        raise UserError(
            f"no record shares items with {_label(vs)} ({vs.model}/{vs.benchmark})",
            "pass records of the same model and benchmark, run on the same --limit/--seed items",
        )
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


# --------------------------------------------------------------------------------------------
# Regression comparison

def _match_key(r: ResultRecord) -> tuple:
    return (r.model, r.benchmark, r.method, policy_name(r.policy), r.split, r.n)


def _key_label(key: tuple) -> str:
    model, bench, method, pol, split, n = key
    return f"{model}/{bench}/{method}/{pol} ({split}, n={n})"


def _is_num(x: object, none_ok: bool = False) -> bool:
    return (x is None and none_ok) or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _token_split(r: ResultRecord) -> str:
    """``fewer tokens x cheaper tokens`` of the whole question (``-`` without a decomposition)."""
    fewer, cheaper = decomposition_cells(r)[:2]
    return "-" if fewer == cheaper == "-" else f"{fewer} x {cheaper}"


def _index(records: Iterable[ResultRecord], side: str) -> dict[tuple, ResultRecord]:
    out: dict[tuple, ResultRecord] = {}
    for r in records:  # load_record has checked the types of what compare reads
        key = _match_key(r)
        if key in out:
            raise UserError(
                f"{side} has two records for {_key_label(key)}",
                f"pass each model/benchmark/method/policy only once on the {side} side",
            )
        out[key] = r
    return out


def _paired(base: ResultRecord, cur: ResultRecord) -> str:
    """Paired difference current - baseline when both carry per-item results on the same ids."""
    b = {it.id: it.correct for it in base.items}
    c = {it.id: it.correct for it in cur.items}
    if not b or b.keys() != c.keys():
        return "-"
    ids = sorted(b)
    return paired_cell([c[i] for i in ids], [b[i] for i in ids])


def paired_cell(a: list[bool], b: list[bool]) -> str:
    """``a - b`` on the same items: ``+0.015 [-0.053, +0.083] (+25/-22)`` (gained / lost by ``a``)."""
    d = metrics.paired_difference(a, b)
    lo, hi = d["ci95"]
    return f"{d['mean_diff']:+.3f} [{fmt_num(lo, '+.3f')}, {fmt_num(hi, '+.3f')}] (+{d['a_only']}/-{d['b_only']})"


def _plan_change(base: dict[str, float], cur: dict[str, float], tol: float = 1e-9) -> str:
    changes = []
    for s in list(dict.fromkeys([*base, *cur])):
        x, y = base.get(s), cur.get(s)
        if x is None or y is None or abs(x - y) > tol:
            changes.append(f"{s} {fmt_num(x, '.2f')}->{fmt_num(y, '.2f')}")
    return "; ".join(changes)


def _outside(x: float, ci, slack: float) -> bool:
    lo, hi = ci
    return x < lo - slack - 1e-12 or x > hi + slack + 1e-12


def _agreement(r: ResultRecord) -> tuple[float, tuple[float, float]] | None:
    """Answer agreement with dense and its Wilson 95% CI, when the record compares with dense."""
    f = r.fidelity or {}
    if f.get("agreement") is None or not f.get("n"):
        return None
    n = int(f["n"])
    return f["agreement"], stats.wilson_ci95(round(f["agreement"] * n), n)


def exact_numerics(b: ResultRecord, c: ResultRecord) -> bool:
    """Whether both records' answers must match item for item (exact mode): there a changed answer
    is a change, not rounding noise."""
    return all(noise.exact_numerics(r.numerics or r.dtype, r.device) for r in (b, c))


def changed_answers(b: ResultRecord, c: ResultRecord) -> list[str]:
    """Ids whose prediction differs between the records, or that only one of them has (in item order)."""
    return item_changes(b.items, c.items).answers


def item_status(b: ResultRecord, c: ResultRecord, exact: bool) -> list[str]:
    """The per-item regressions, one line each naming the first ids and the count. In both modes: the
    item set (exact mode counts it with the changed answers), a changed gold label, and a changed
    correctness with the same prediction and gold (the scoring changed). In exact mode also any
    changed prediction."""
    ch = item_changes(b.items, c.items)
    status = []
    if exact and ch.answers:
        status.append(f"REGRESSION: {count(len(ch.answers), 'answer')} changed (ids: {id_list(ch.answers)})")
    if not exact and ch.one_side:
        status.append(f"REGRESSION: item set changed, {count(len(ch.one_side), 'id')} on one side only "
                      f"(ids: {id_list(ch.one_side)})")
    if ch.gold:
        status.append(f"REGRESSION: gold label changed on {count(len(ch.gold), 'item')} (ids: {id_list(ch.gold)})")
    if ch.scoring:
        status.append(f"REGRESSION: correctness changed on {count(len(ch.scoring), 'item')} with the same "
                      f"prediction and gold (ids: {id_list(ch.scoring)})")
    return status


def _log_rounds(r: ResultRecord) -> list[float]:
    """log of the record's finite, positive per-round speedups (``timing["speedup_rounds"]``)."""
    rounds = (r.timing or {}).get("speedup_rounds") or []
    return [math.log(x) for x in rounds if _is_num(x) and math.isfinite(x) and x > 0]


def speed_check(b: ResultRecord, c: ResultRecord, speed_tol: float) -> tuple[bool, str]:
    """Whether the current speedup regressed against the reference's, and the tolerance cell.

    With at least 2 per-round speedups on both sides, the ratio is judged on a log scale:
    ``log(c / b) < -max(-log(1 - speed_tol), 3 * sqrt(s_b^2 / R_b + s_c^2 / R_c))``, where ``s`` is
    the standard deviation of a side's log round speedups and ``R`` its rounds. The second term is
    three standard errors of the difference of the two mean log speedups, so the bar follows the
    spread the runs actually showed (few or noisy rounds widen it; 3 rather than 2 because an sd
    from 3 rounds is itself rough). ``speed_tol`` is the smallest tolerance: rounds of one run
    share a machine and a moment, so they miss the run-to-run and machine-to-machine spread.
    Without rounds on a side: regressed when even the upper end of the current 95% CI (the point,
    without a CI) is below ``b * (1 - speed_tol)``. No speedup on a side: nothing to judge.
    """
    if b.speedup is None or c.speedup is None:
        return False, "-"
    lb, lc = _log_rounds(b), _log_rounds(c)
    if len(lb) >= 2 and len(lc) >= 2 and b.speedup > 0 and c.speedup > 0:
        spread = 3 * math.sqrt(statistics.variance(lb) / len(lb) + statistics.variance(lc) / len(lc))
        tol_log = max(-math.log(1 - speed_tol), spread)
        return math.log(c.speedup / b.speedup) < -tol_log, f"-{1 - math.exp(-tol_log):.0%}"
    # A few timed questions give a wide speedup CI (CI's machines also vary): a point estimate
    # below the bar whose CI still reaches it is noise, not a regression.
    high = c.speedup_ci95[1] if c.speedup_ci95 else None
    best_plausible = high if high is not None and math.isfinite(high) else c.speedup  # refused CI: the point
    return best_plausible < b.speedup * (1 - speed_tol), f"-{speed_tol:.0%} (whole CI)"


def regression_status(b: ResultRecord, c: ResultRecord, acc_tol: float, speed_tol: float) -> list[str]:
    """Why the current record regressed against the reference. Items (``item_status``): in both modes
    a changed item set, gold label, or correctness with the same prediction; in exact mode
    (``exact_numerics``) also any changed answer, otherwise accuracy or agreement outside the
    reference's 95% CI (widened by ``acc_tol``). Speed: ``speed_check``."""
    exact = exact_numerics(b, c)
    status = item_status(b, c, exact)
    if not exact:
        if _outside(c.accuracy, b.accuracy_ci95, acc_tol):
            status.append("REGRESSION: accuracy outside reference CI")
        ref_agree, cur_agree = _agreement(b), _agreement(c)
        if ref_agree and cur_agree and _outside(cur_agree[0], ref_agree[1], acc_tol):
            status.append("REGRESSION: agreement outside reference CI")
    if speed_check(b, c, speed_tol)[0]:
        status.append("REGRESSION: speed")
    return status


def _gate_lines(n_exact: int, n_matched: int, acc_tol: float, speed_tol: float) -> list[str]:
    """The report's header: which answer rule applied (exact or 95% CI) and the speed rule."""
    exact = "exact (float32 on CPU: any changed answer)"
    ci = f"95% CI (accuracy or agreement outside the reference's 95% CI, +/-{acc_tol:.3f})"
    if n_matched and n_exact == n_matched:
        answers = exact
    elif n_exact:
        answers = f"{exact} for the {n_exact} cases with a changed-answers count; {ci} for the others"
    else:
        answers = ci
    return [
        f"Regression gate: answers {answers}; items, in both: the item set, every gold label, and "
        "correctness where the prediction is the same must match; "
        "speed: the ratio current/reference below 1 - its tolerance "
        f"('speed tol': 3 standard errors of the per-round speedups, at least {speed_tol:.0%}), or, without "
        f"round speedups, more than {speed_tol:.0%} below the reference's with its whole 95% CI; "
        "or a reference case missing.",
    ]


def compare_records(
    baseline: list[ResultRecord],
    current: list[ResultRecord],
    acc_tol: float = 0.0,
    speed_tol: float = 0.10,
) -> tuple[str, bool]:
    """Regression report (markdown) of ``current`` against the reference ``baseline``, and whether
    one regressed.

    Records match on (model, benchmark, method, policy name, split, n). Regressions:

    - items, in both modes: an id on one side only, a changed gold label (``answer``), or a changed
      ``correct`` where the prediction and gold are the same (a record's gold labels moved with its
      predictions kept regresses though no answer changed);
    - answers, exact mode (``exact_numerics``: float32 on CPU on both sides, where the noise floor
      never saw an answer flip): any item whose prediction changed;
    - answers, otherwise (across numerics or devices): accuracy, or answer agreement with dense,
      outside the reference's 95% CI (Wilson; widened by ``acc_tol``);
    - speed (``speed_check``): the speedup ratio current/reference below 1 minus a tolerance of 3
      standard errors of the two sides' per-round speedups, at least ``speed_tol``; for records
      without per-round speedups, a speedup below ``baseline * (1 - speed_tol)`` with the upper end
      of its 95% CI below it too (speedups are ratios measured side by side in one run, never
      seconds across machines);
    - a reference record missing from ``current``.

    A record with a field of the wrong type raises ``UserError``, as do two records with the same key
    on one side. A changed executed-cost fraction is flagged "plan changed" but is not a regression by
    itself; records only in ``current`` (new cases) are listed. The current record's comparison with
    dense (agreement, flips, answer KL, McNemar p, speedup CI) is shown beside it.
    """
    if not 0 <= speed_tol < 1:
        raise UserError(f"speed tolerance {speed_tol} is not a fraction in [0, 1)", "pass e.g. --speed-tol 0.10")
    base = _index(baseline, "baseline")
    cur = _index(current, "current")
    headers = [
        "record", "acc base [95% CI]", "acc cur", "d acc", "paired d [95% CI] (+gained/-lost)", "changed answers",
        "speedup base", "speedup cur", "d speedup", "speed tol", "fewer x cheaper tokens cur", "cost fraction change",
        "agreement cur",
        "flips cur", "answer KL cur", "McNemar p cur", "speedup cur [95% CI]", "status",
    ]
    rows = []
    missing = sorted(base.keys() - cur.keys())
    matched = sorted(base.keys() & cur.keys())
    regressed = bool(missing)
    n_exact = 0
    for key in matched:
        b, c = base[key], cur[key]
        status = regression_status(b, c, acc_tol, speed_tol)
        regressed = regressed or bool(status)
        changed = "-"
        if exact_numerics(b, c):
            n_exact += 1
            changed = str(len(changed_answers(b, c)))
        d_speed = "-"
        if b.speedup and c.speedup is not None:
            d_speed = f"{(c.speedup / b.speedup - 1) * 100:+.1f}%"
        plan = _plan_change(b.executed_cost_fraction, c.executed_cost_fraction)
        if plan:
            status.append("plan changed")
        rows.append([
            _key_label(key), _accuracy(b), fmt_num(c.accuracy, ".3f"), fmt_num(c.accuracy - b.accuracy, "+.3f"),
            _paired(b, c), changed, _speedup(b.speedup), _speedup(c.speedup), d_speed,
            speed_check(b, c, speed_tol)[1], _token_split(c), plan or "-", *_fidelity_cells(c), speedup_ci_cell(c),
            ", ".join(status) or "ok",
        ])
    rows += [[_key_label(key), _accuracy(base[key]), *["-"] * (len(headers) - 3), "REGRESSION: missing case"]
             for key in missing]

    parts = ["## Comparison: current vs baseline", "", *_gate_lines(n_exact, len(matched), acc_tol, speed_tol), ""]
    if rows:
        parts += [_with_notes(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
                              [cur[k] for k in matched]), ""]
    else:
        parts += ["No record appears on both sides.", ""]
    new_cases = sorted(cur.keys() - base.keys())
    if new_cases:
        parts.append("Only in current (new cases, not compared):")
        parts += [f"- {_key_label(k)}" for k in new_cases]
        parts.append("")
    parts.append("Result: REGRESSION" if regressed else "Result: no regression")
    return "\n".join(parts) + "\n", regressed
