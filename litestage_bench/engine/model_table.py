"""What `litestage-bench models` prints: a table that fits WIDTH columns, or with ``pip`` the full
pip commands (one per model, every chunk package: long lines, made to be copied)."""
from __future__ import annotations

import textwrap

WIDTH = 100  # the default output fits a terminal this wide
INDENT = "  "  # a model's description, on the lines under its row
COLUMNS = ("alias", "installed", "converted", "install")

FOOTER = ("Also accepted: any local model folder, a local .gguf file, or a Hugging Face id (online).\n"
          "The pip packages of each model: litestage-bench models --pip")


def models_table(rows: list[dict[str, str]]) -> str:
    """One row per model (alias, installed, converted, install), its description wrapped under it."""
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS]

    def line(cells) -> str:
        return "  ".join(str(x).ljust(w) for x, w in zip(cells, widths)).rstrip()

    out = [line(COLUMNS), line("-" * w for w in widths)]
    for r in rows:
        out.append(line(r[c] for c in COLUMNS))
        out += textwrap.wrap(r["what"], WIDTH, initial_indent=INDENT, subsequent_indent=INDENT)
    return "\n".join([*out, "", FOOTER])


def pip_commands(rows: list[dict[str, str]]) -> str:
    """Per model a comment line and its pip command with the full package list."""
    return "\n".join(f"# {r['alias']}: {r['what']}\n{r['pip']}" for r in rows)
