"""A campaign's ledger, rendered from the repository: one row per piece, its state, what it has cost
so far on each CPU, and the core-hours left.

`python -m litestage_bench.studies.ledger CAMPAIGN.json --into LEDGER.md` replaces the text between
the markers `<!-- ledger:begin -->` and `<!-- ledger:end -->` of LEDGER.md (the prose around them is
kept) with the table and its totals. CAMPAIGN.json lists the pieces:

- a record (`record`: its path; `items`, `timed`, `rounds`, `sides` (1: dense, 2: dense beside the
  method, k + 1: k methods timed together against one dense by `retime-latency`, whose piece names the
  last record it writes and its `checkpoint`)): landed when the record is there; partial while its
  checkpoint (`checkpoint`, else the `run` checkpoint `PATH.partial.jsonl`) holds finished batches and
  timed questions; measured seconds per item from the record's `timing.accuracy_cost` or the
  checkpoint's batches, and per batch-1 question from its timed ones; its measured hours: those
  batches and every timed round, the method's and dense's;
- a search (`rows`: its row folder, `policy`: the policy it writes, `estimate_hours`): landed when
  the policy is there; its measured hours are what its rows hold (search_report.rows_cost);
- anything else (`done_when`: a path that exists once it is done, `estimate_hours`).

`--next LANE` prints the command of the first piece of that lane (`lane`, `command`) that has not
landed and whose `after` pieces (by name) have: `scripts/campaign_worker.sh CAMPAIGN LANE` runs them
one after another, so a core goes on to the next piece when one lands (a partial piece's command
resumes it: run checkpoints and search rows).

What is left is estimated: a record's missing accuracy items at its own measured rate (else the
campaign's `assumptions.accuracy_s_per_item`) plus its missing timed questions x rounds x sides at
its own measured seconds per question (else `assumptions.batch1_s_per_question`); a search's
`estimate_hours` less what its rows have cost.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tabulate import tabulate

from ..core.errors import UserError, print_error
from ..evaluation.checkpoint import RunCheckpoint
from ..evaluation.runner import accuracy_cost, timed_phase
from ..methods.search_report import rows_cost
from ..records.results import write_text_atomic
from ..records.timing import round_seconds

BEGIN, END = "<!-- ledger:begin -->", "<!-- ledger:end -->"


def _rate(cost: dict) -> tuple[float | None, str, float]:
    """Seconds per item over the batches with a cost, the CPUs they ran on, and their seconds."""
    per_cpu = cost.get("per_cpu") or {}
    items, seconds = sum(c["items"] for c in per_cpu.values()), sum(c["seconds"] for c in per_cpu.values())
    if not items:
        return None, "-", seconds
    return seconds / items, ", ".join(sorted(per_cpu)), seconds


def record_row(piece: dict, assume: dict) -> dict:
    path = Path(piece["record"]) if piece.get("record") else None
    items, timed = piece.get("items", 200), piece.get("timed", 20)
    rounds, sides = piece.get("rounds", 2), piece.get("sides", 2)
    if path is not None and path.is_file():
        record = json.loads(path.read_text(encoding="utf-8"))
        rate, cpus, seconds = _rate((record.get("timing") or {}).get("accuracy_cost") or {})
        return {"state": "landed", "rate": rate, "cpus": cpus, "spent": (seconds + timed_seconds(record)) / 3600,
                "left": 0.0}
    # a group timed together (retime-latency) keeps its timed questions under its own name
    where = piece.get("checkpoint") or (f"{path}.partial.jsonl" if path is not None else None)
    checkpoint = RunCheckpoint.read(where) if where else None
    if checkpoint is None:
        left = (items * assume["accuracy_s_per_item"] + timed * rounds * sides * assume["batch1_s_per_question"]) / 3600
        return {"state": piece.get("when", "to do"), "rate": None, "cpus": "-", "spent": 0.0, "left": left}
    done = sum(len(v) for (phase, _), v in checkpoint.entries.items() if phase == "batch")
    timed_entries = [v for (phase, _), v in checkpoint.entries.items() if phase.startswith(timed_phase(rounds))]
    rate, cpus, seconds = _rate(accuracy_cost(checkpoint))
    # a timed question's entry: each pipeline's item, its latency the mean over the rounds
    latencies = [it.latency_s for entry in timed_entries for it in entry if it.latency_s == it.latency_s]
    per_question = sum(latencies) / len(latencies) if latencies else None
    spent = (seconds + sum(latencies) * rounds) / 3600
    left = ((items - done) * (rate or assume["accuracy_s_per_item"]) / 3600
            + max(timed - len(timed_entries), 0) * rounds * sides
            * (per_question or assume["batch1_s_per_question"]) / 3600)
    timed_rate = "" if per_question is None else f", {per_question:.0f} s per batch-1 question and side"
    return {"state": f"partial: {done}/{items} accuracy items, {len(timed_entries)}/{timed} timed questions"
                     f"{timed_rate} (`{checkpoint.path.name}`)", "rate": rate, "cpus": cpus, "spent": spent, "left": left}


def timed_seconds(record: dict) -> float:
    """The seconds a record's batch-1 timing took: every round of its method and of dense's beside it."""
    dense = ((record.get("timing") or {}).get("dense_rounds") or {}).values()
    rounds = [r for it in record.get("items", []) for r in it.get("timing_rounds") or []]
    return sum(map(round_seconds, rounds + [r for item_rounds in dense for r in item_rounds]))


def search_row(piece: dict, first_in_folder: bool) -> dict:
    """A search's row. The rows of one folder serve every search of its model and benchmark (a row is
    keyed by the plan, not the target): the folder's hours go on its first search in the campaign."""
    rows, estimate = Path(piece["rows"]), float(piece["estimate_hours"])
    cost = rows_cost(rows) if rows.is_dir() and first_in_folder else {}
    spent = sum(sum(v.values()) for v in cost.values()) / 3600
    cpus = ", ".join(sorted({cpu for v in cost.values() for cpu in v})) or "-"
    if Path(piece["policy"]).is_file():
        return {"state": "landed", "rate": None, "cpus": cpus, "spent": spent, "left": 0.0}
    if not first_in_folder:
        return {"state": f"not landed (its rows' hours: on the first search of `{rows.name}`)", "rate": None,
                "cpus": "-", "spent": 0.0, "left": estimate}
    n_rows = {kind: len(list(rows.glob(f"{kind}-*.json"))) for kind in ("answers", "timing")} if rows.is_dir() else {}
    dense = rows.is_dir() and any(not p.name.startswith("dense-batch-") for p in rows.glob("dense-*.json"))
    state = (f"partial: dense pass {'whole' if dense else 'under way'}, {n_rows.get('answers', 0)} answer and "
             f"{n_rows.get('timing', 0)} timing rows" if spent or dense else piece.get("when", "to do"))
    return {"state": state, "rate": None, "cpus": cpus, "spent": spent, "left": max(estimate - spent, 0.0)}


def other_row(piece: dict) -> dict:
    done = bool(piece.get("done_when")) and Path(piece["done_when"]).exists()
    return {"state": "landed" if done else piece.get("when", "to do"), "rate": None, "cpus": "-", "spent": 0.0,
            "left": 0.0 if done else float(piece.get("estimate_hours", 0.0))}


def piece_row(piece: dict, assume: dict, folders: set[str]) -> dict:
    if "rows" in piece:
        first = piece["rows"] not in folders
        folders.add(piece["rows"])
        return search_row(piece, first)
    if "items" in piece or "record" in piece:
        return record_row(piece, assume)
    return other_row(piece)


def next_command(campaign: dict, lane: str) -> str:
    """The command of the lane's first piece not landed whose `after` pieces have landed; "" if none."""
    assume, folders = campaign["assumptions"], set()
    landed = {piece["piece"]: piece_row(piece, assume, folders)["state"] == "landed" for piece in campaign["pieces"]}
    for piece in campaign["pieces"]:
        if piece.get("lane") == lane and piece.get("command") and not landed[piece["piece"]]:
            if all(landed.get(name, False) for name in piece.get("after", [])):
                return piece["command"]
    return ""


def render(campaign: dict, into: str | None = None) -> str:
    assume = campaign["assumptions"]
    table, spent, left, landed, folders = [], 0.0, 0.0, 0, set()
    for piece in campaign["pieces"]:
        row = piece_row(piece, assume, folders)
        spent, left, landed = spent + row["spent"], left + row["left"], landed + (row["state"] == "landed")
        where = piece.get("record") or piece.get("rows") or piece.get("done_when") or "-"
        table.append([piece["piece"], row["state"], f"`{where}`" if where != "-" else "-",
                      "-" if row["rate"] is None else f"{row['rate']:.1f} ({row['cpus']})",
                      f"{row['spent']:.2f}" if row["spent"] else "-", f"{row['left']:.1f}"])
    return "\n".join([
        f"Rendered with `python -m litestage_bench.studies.ledger {campaign['path']}"
        + (f" --into {into}" if into else "") + "` from "
        "the records, checkpoints and search rows in the repository. Hours are one-thread hours; what is "
        f"left is estimated at the piece's own measured rate, else {assume['accuracy_s_per_item']:g} s per "
        f"accuracy item and {assume['batch1_s_per_question']:g} s per batch-1 question ({assume['source']}). "
        "A search folder's rows serve every search of its model and benchmark: their hours are on its first "
        "search; a row written before it kept its seconds is not counted.",
        "",
        tabulate(table, headers=["piece", "state", "where", "measured s per accuracy item (CPU)",
                                 "measured hours (rows, checkpoints, records)", "core-hours left (estimate)"],
                 tablefmt="github"),
        "",
        f"**Totals:** {landed} of {len(campaign['pieces'])} pieces landed; measured in what the repository "
        f"holds: {spent:.1f} core-hours; left: about **{left:.0f} core-hours** (estimate).",
    ])


def load_campaign(path: str) -> dict:
    try:
        campaign = json.loads(Path(path).read_text(encoding="utf-8"))
        campaign["assumptions"]["accuracy_s_per_item"], campaign["assumptions"]["batch1_s_per_question"]
        for piece in campaign["pieces"]:
            piece["piece"]
            if "rows" in piece:
                piece["policy"], float(piece["estimate_hours"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"campaign {path}: unreadable or incomplete ({err!r})",
                        "see litestage_bench/studies/ledger.py for its keys") from err
    campaign["path"] = path
    return campaign


def write_into(ledger: Path, text: str) -> None:
    """Replace the text between the markers, keeping the rest of the file."""
    try:
        old = ledger.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read {ledger} ({err.strerror})", "give an existing ledger file") from err
    if old.count(BEGIN) != 1 or old.count(END) != 1 or old.index(BEGIN) > old.index(END):
        raise UserError(f"{ledger} has no single '{BEGIN}' ... '{END}' block", "add the two markers where the "
                        "table goes")
    head, rest = old.split(BEGIN)
    write_text_atomic(ledger, f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litestage_bench.studies.ledger", description=__doc__.split("\n")[0])
    parser.add_argument("campaign", help="the campaign's pieces (JSON)")
    parser.add_argument("--into", help="the ledger (markdown) whose marked block is replaced; else printed")
    parser.add_argument("--next", metavar="LANE", help="print the command of the lane's next piece (nothing: none)")
    args = parser.parse_args(argv)
    try:
        if args.next:
            command = next_command(load_campaign(args.campaign), args.next)
            if command:
                print(command)
            return 0
        text = render(load_campaign(args.campaign), args.into)
        if args.into:
            write_into(Path(args.into), text)
    except UserError as err:
        print_error(err)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
