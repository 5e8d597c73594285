"""``python -m lora_spectrum`` / ``lora-spectrum``: argument parsing and printing, nothing else.

Every command calls the same core functions the Streamlit app uses: ``render_commands`` (inspect, demo, grid,
bench, insight), ``decision_commands`` (ratings, promote, report), ``base_commands`` (fetch-base) and
``watch_command`` (watch). Exit codes: 0 success, 1 some work failed
(reported, the rest done), 2 bad arguments or an unusable input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys

from lora_spectrum import language
from lora_spectrum.cli import base_commands, decision_commands, render_commands, watch_command
from lora_spectrum.cli.arguments import Parser, quiet_libraries
from lora_spectrum.errors import LoraSpectrumError

COMMANDS = {**render_commands.COMMANDS, **decision_commands.COMMANDS, **base_commands.COMMANDS,
            **watch_command.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="lora-spectrum", description="Compare the epochs of a LoRA training run, rank them blind, "
                                                  "and ship one.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    render_commands.add_parsers(sub)
    decision_commands.add_parsers(sub)
    base_commands.add_parsers(sub)
    watch_command.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; its words follow LANGUAGE / LC_ALL / LC_MESSAGES / LANG (English by default), its JSON
    keys never change."""
    args = build_parser().parse_args(argv)
    if args.command in ("grid", "bench", "demo"):
        quiet_libraries()
    with language.using(language.translator(language.from_environment())) as tr:
        try:
            return COMMANDS[args.command](args)
        except LoraSpectrumError as exc:
            print(f"lora-spectrum {args.command}: {tr.error(exc)}", file=sys.stderr)
            return 2
