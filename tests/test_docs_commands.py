"""The commands and repository paths named in README.md and docs/*.md parse and exist.

Nothing here runs a command or loads a model: parsers are built and asked to parse, scripts are
read by `bash -n`, paths are globbed. The rules, kept simple on purpose (docs/testing.md):

Commands are the code spans and code-block lines (shell blocks; `\\` and indented continuation lines
are joined; `# comments` dropped) that start with `litestage-bench`, `python -m MODULE`,
`python SCRIPT.py`, `pytest` or `bash`, after any leading `VAR=value` and `time`; `&&`, `||` and `;`
separate commands, and `> FILE` is a redirect (its path is only checked as a path).

- `litestage-bench ARGS` and `python -m litestage_bench ARGS`: the CLI's own parser
  (`litestage_bench.cli.build_parser`) parses ARGS. `python -m MODULE ARGS` and
  `python SCRIPT.py ARGS`: the module's `main` or the script is run up to its
  `ArgumentParser.parse_args` call, which is stopped there and handed the parser; that parser then
  parses ARGS.
- A full command's placeholder tokens (`PLACEHOLDERS`: `M`, `B`, `K`, `N`, ...) are replaced by a
  plausible value before parsing.
- A synopsis, i.e. a command with a token that contains `...` (arguments elided) or `[`, `]`, `|`
  (optional parts, alternatives), is not parsed: its subcommand must exist and every `--option` it
  names must be one of that parser's options.
- `litestage-bench` alone names the program; `litestage-bench SUBCOMMAND` alone names a subcommand,
  which must exist. `litestage-bench WORD: ...` (a word ending in `:` after the program name) is an
  output line quoted from the program, not a command.
- `bash SCRIPT ...`: SCRIPT exists and `bash -n` accepts it. `pytest ...`: every test path it names
  (`tests/...`, `*.py`, `--ignore=PATH`; `::node` ids cut) exists.

Paths are the tokens of code spans and code blocks that start with a repository folder (`results/`,
`scripts/`, `litestage_bench/`, `tests/`, `docs/`, `baselines/`, `examples/`, `.ci/`) or with a
package folder written short (`core/`, `engine/`, ... under `litestage_bench/`). Each must match at
least one file or folder, read as a glob: `{a,b}` expands, `...` and the placeholder words in capitals
(`PATH_PLACEHOLDERS`) match anything. `NOT_COMMITTED` lists the outputs that runs write and the
repository does not hold. Relative markdown links (and their `#anchors`) must resolve.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import importlib
import io
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Full commands: a token equal to one of these is replaced before parsing.
PLACEHOLDERS = {
    "M": "smollm2-135m", "MODEL": "smollm2-135m", "B": "obqa", "BENCH": "obqa", "X": "dense",
    "K": "4", "N": "8", "LIMIT": "200", "TIMED": "20", "NUMERICS": "float32",
    "FILE": "FILE.json", "OUT": "/tmp/out", "DIR": "/tmp/dir",
}
# Paths: a capitalised word (or `_`-joined words) made of these matches anything.
PATH_PLACEHOLDERS = {"MODEL", "BENCH", "METHOD", "CASE", "NUMERICS", "B", "M", "K", "N", "X", "FILE",
                     "OUT", "DIR"}
# Written by a run, not committed (scripts/gpu_grid.sh's output folder).
NOT_COMMITTED = {"results/grid-gpu"}
REPO_FOLDERS = ("results", "scripts", "litestage_bench", "tests", "docs", "baselines", "examples", ".ci")
PACKAGE_FOLDERS = ("core", "engine", "evaluation", "methods", "records", "grid", "studies")
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";"}


@dataclass(frozen=True)
class Snippet:
    where: str  # FILE:LINE
    text: str
    shell: bool  # from a code span or a shell code block (may hold commands)


@dataclass(frozen=True)
class Command:
    where: str
    text: str  # as written, for messages
    kind: str  # cli, module, script, pytest, bash
    target: str  # module name or script path ("" for cli and pytest)
    args: tuple[str, ...]

    @property
    def synopsis(self) -> bool:
        return any("..." in a or "[" in a or "]" in a or "|" in a for a in self.args)

    def __str__(self) -> str:
        return f"{self.where}: `{self.text}`"


# ---------------------------------------------------------------------------------------- reading

def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def snippets(path: Path) -> list[Snippet]:
    """Code-block lines (continuations joined) and inline code spans of one markdown file."""
    out: list[Snippet] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    prose: list[tuple[int, str]] = []
    fence_lang: str | None = None
    block: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```\s*(\S*)", line)
        if fence and fence_lang is None:
            fence_lang, block = fence.group(1).lower(), []
            continue
        if fence and fence_lang is not None:
            out += _block_snippets(path, block, fence_lang in SHELL_LANGS)
            fence_lang = None
            continue
        if fence_lang is not None:
            block.append((number, line))
        else:
            prose.append((number, line))
    text = "\n".join(line for _, line in prose)
    starts = [0]
    for _, line in prose:
        starts.append(starts[-1] + len(line) + 1)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        index = next(i for i, start in enumerate(starts) if start > match.start()) - 1
        out.append(Snippet(f"{_rel(path)}:{prose[index][0]}", " ".join(match.group(1).split()), True))
    return out


def _block_snippets(path: Path, block: list[tuple[int, str]], shell: bool) -> list[Snippet]:
    joined: list[tuple[int, str]] = []
    for number, line in block:
        if shell:
            line = re.sub(r"(^|\s)#.*$", "", line)
        continues = joined and (joined[-1][1].endswith("\\") or (line[:1].isspace() and line.strip()
                                                                 and joined[-1][1].strip()))
        if continues:
            first, previous = joined[-1]
            joined[-1] = (first, previous.rstrip("\\").rstrip() + " " + line.strip())
        else:
            joined.append((number, line.rstrip()))
    return [Snippet(f"{_rel(path)}:{n}", " ".join(t.split()), shell) for n, t in joined if t.strip()]


def all_snippets() -> list[Snippet]:
    return [s for path in DOC_FILES for s in snippets(path)]


# --------------------------------------------------------------------------------------- commands

def commands_of(snippet: Snippet) -> list[Command]:
    if not snippet.shell or not re.match(r"^([A-Z_][A-Z0-9_]*=\S*\s+|time\s+)*(litestage-bench|python3?|pytest|bash)\b",
                                         snippet.text):
        return []
    tokens = shlex.split(snippet.text)  # a quoting error here fails the test that collects it
    parts: list[list[str]] = [[]]
    for token in tokens:
        if token in SEPARATORS:
            parts.append([])
        else:
            parts[-1].append(token)
    found = []
    for part in parts:
        while part and (re.match(r"^[A-Z_][A-Z0-9_]*=", part[0]) or part[0] == "time"):
            part = part[1:]
        if ">" in part:  # a redirect: the command ends there
            part = part[:part.index(">")]
        command = _classify(snippet, part)
        if command:
            found.append(command)
    return found


def _classify(snippet: Snippet, part: list[str]) -> Command | None:
    if not part:
        return None
    head, rest = part[0], tuple(part[1:])
    make = functools.partial(Command, snippet.where, " ".join(part))
    if head == "litestage-bench":
        return None if rest[:1] and rest[0].endswith(":") else make("cli", "", rest)
    if head in ("python", "python3") and rest[:1] == ("-m",) and len(rest) > 1:
        module, args = rest[1], rest[2:]
        if module == "litestage_bench":
            return make("cli", "", args)
        if module == "pytest":
            return make("pytest", "", args)
        return make("module", module, args)
    if head in ("python", "python3") and rest[:1] and rest[0].endswith(".py"):
        return make("script", rest[0], rest[1:])
    if head == "pytest":
        return make("pytest", "", rest)
    if head == "bash" and rest:
        return make("bash", rest[0], rest[1:])
    return None


def all_commands() -> list[Command]:
    return [c for s in all_snippets() for c in commands_of(s)]


class _Stop(Exception):
    """Raised in place of `ArgumentParser.parse_args`: carries the parser that was about to parse."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("stopped at parse_args")
        self.parser = parser


def _stop(self, args=None, namespace=None):
    raise _Stop(self)


@functools.lru_cache(maxsize=None)
def cli_parser() -> argparse.ArgumentParser:
    from litestage_bench.cli import build_parser
    return build_parser()


@functools.lru_cache(maxsize=None)
def entry_parser(kind: str, target: str) -> argparse.ArgumentParser:
    """The parser that `python -m MODULE` or `python SCRIPT.py` builds, stopped before it parses."""
    if kind == "cli":
        return cli_parser()
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _stop), \
            mock.patch.object(sys, "argv", [target]):
        try:
            if kind == "module":
                main = getattr(importlib.import_module(target), "main", None)
                assert callable(main), f"{target} has no main()"
                main([])
            else:
                runpy.run_path(str(REPO / target), run_name="__main__")
        except _Stop as stop:
            return stop.parser
    raise AssertionError(f"{target} never called ArgumentParser.parse_args")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _parse(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """None if `args` parse, else the parser's complaint."""
    from litestage_bench.core.errors import UserError
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(args)
    except UserError as exc:  # the CLI's parser reports usage errors this way
        return str(exc)
    except SystemExit as exc:
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    return None


def check_command(command: Command) -> None:
    if command.kind == "bash":
        script = REPO / command.target
        assert script.is_file(), f"{command}: no script {command.target}"
        _bash_n(command.target)
        return
    if command.kind == "pytest":
        for token in command.args:
            value = token.split("=", 1)[1] if token.startswith("--ignore=") else token
            if value.startswith("tests/") or value.split("::")[0].endswith(".py"):
                path = value.split("::")[0]
                assert (REPO / path).exists(), f"{command}: no test path {path}"
        return
    if command.kind == "script":
        assert (REPO / command.target).is_file(), f"{command}: no script {command.target}"
    parser = entry_parser(command.kind, command.target)
    args = list(command.args)
    subcommands = _subparsers(parser)
    if command.kind == "cli" and not args:
        return
    if command.kind == "cli" and len(args) == 1 and not command.synopsis:
        assert args[0] in subcommands, f"{command}: no subcommand {args[0]!r} (have {', '.join(subcommands)})"
        return
    if command.synopsis:
        names = [a for a in args if not a.startswith(("-", "[")) and "..." not in a]
        if subcommands and names:
            assert names[0] in subcommands, (
                f"{command}: a synopsis must name a subcommand first (have {', '.join(subcommands)})")
            parser = subcommands[names[0]]
        for token in args:
            option = token.strip("[]").split("=", 1)[0]
            if option.startswith("--") and option != "--":
                assert option in parser._option_string_actions, f"{command}: {parser.prog} has no option {option}"
        return
    complaint = _parse(parser, [PLACEHOLDERS.get(a, a) for a in args])
    assert complaint is None, f"{command} does not parse: {complaint}"


@functools.lru_cache(maxsize=None)
def _bash_n(script: str) -> None:
    done = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
    assert done.returncode == 0, f"bash -n {script}: {done.stderr.strip()}"


# ------------------------------------------------------------------------------------------ paths

def path_tokens(snippet: Snippet) -> list[str]:
    found = []
    for raw in snippet.text.split():
        for part in re.split(r"[=,](?=[A-Za-z.])", raw) if "{" not in raw else [raw]:
            token = part.strip("`\"'(<").rstrip(")\"',;:>")
            if token.endswith(".") and not token.endswith(".."):
                token = token[:-1]
            token = token.split("::")[0]
            first = token.split("/", 1)[0]
            if "/" in token and first in REPO_FOLDERS:
                found.append(token)
            elif "/" in token and first in PACKAGE_FOLDERS:
                found.append("litestage_bench/" + token)
    return found


def _glob_patterns(path: str) -> list[str]:
    brace = re.search(r"\{([^{}]*)\}", path)
    if brace:
        return [p for alt in brace.group(1).split(",")
                for p in _glob_patterns(path[:brace.start()] + alt + path[brace.end():])]
    pattern = path.replace("...", "*")

    def placeholder(match: re.Match) -> str:
        return "*" if all(w in PATH_PLACEHOLDERS for w in match.group(0).split("_")) else match.group(0)

    return [re.sub(r"[A-Z][A-Z0-9]*(?:_[A-Z][A-Z0-9]*)*", placeholder, pattern)]


def path_exists(path: str) -> bool:
    if any(path.rstrip("/") == p or path.startswith(p + "/") for p in NOT_COMMITTED):  # or a folder inside one
        return True
    return any(glob.glob(str(REPO / p)) for p in _glob_patterns(path))


def all_paths() -> list[tuple[str, str]]:
    return [(s.where, p) for s in all_snippets() for p in path_tokens(s)]


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = _slug(heading.group(1))
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def all_links() -> list[tuple[str, Path, str]]:
    links = []
    for path in DOC_FILES:
        in_code = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_code = not in_code
            if in_code:
                continue
            for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
                if not re.match(r"^[a-z]+:", target):
                    links.append((f"{_rel(path)}:{number}", path, target))
    return links


# ------------------------------------------------------------------------------------------ tests

COMMANDS = all_commands()
PATHS = all_paths()
LINKS = all_links()


def test_the_docs_name_commands_paths_and_links():
    kinds = {c.kind for c in COMMANDS}
    assert {"cli", "module", "script", "pytest", "bash"} <= kinds, kinds
    assert len(COMMANDS) > 50 and len(PATHS) > 100 and len(LINKS) > 20, (len(COMMANDS), len(PATHS), len(LINKS))


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where}:{c.kind}" for c in COMMANDS])
def test_command_parses(command):
    check_command(command)


def test_repository_paths_exist():
    missing = sorted({f"{where}: {path}" for where, path in PATHS if not path_exists(path)})
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_links_resolve():
    broken = []
    for where, source, target in LINKS:
        file_part, _, anchor = target.partition("#")
        resolved = (source.parent / file_part).resolve() if file_part else source
        if not resolved.exists():
            broken.append(f"{where}: {target} (no {file_part})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{where}: {target} (no heading #{anchor} in {resolved.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_checks_catch_a_broken_command_and_a_missing_path():
    """The rules above fail where they should: a typo in an option, a value of the wrong type, a
    missing script, a synopsis naming an unknown option, a missing path."""
    def fails(text: str) -> bool:
        (command,) = commands_of(Snippet("test", text, True))
        try:
            check_command(command)
        except AssertionError:
            return True
        return False

    assert fails("litestage-bench run --model smollm2-135m --bench obqa --limti 20")
    assert fails("litestage-bench run --bench obqa --k minus-one")
    assert fails("litestage-bench run ... --methd unified --k 4")
    assert fails("litestage-bench frobnicate")
    assert fails("python -m litestage_bench.studies.shots --model smollm2-135m --out x.json --no-such-option")
    assert fails("bash scripts/no_such_script.sh smollm2-135m")
    assert fails("pytest tests/test_no_such_file.py -q")
    assert not fails("litestage-bench run --model M --bench B --method unified --k K --limit N")
    assert not path_exists("results/no_such_folder/MODEL_BENCH.json")
    assert path_exists("results/baselines/MODEL_BENCH.{md,png}")
