"""What every command shares: the one-line-error parser, comma-separated values, quiet library loading bars."""

from __future__ import annotations

import argparse


def csv_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from exc


def csv_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def quiet_libraries() -> None:
    """Our own progress lines are the only ones printed; the libraries' loading bars would bury them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def add_executor_arguments(parser) -> None:
    """``--executor local|ray``, ``--workers N``, ``--ray-address``: where the renders run (the config's default)."""
    parser.add_argument("--executor", choices=["local", "ray"],
                        help="render here (local) or on Ray workers, one resident engine each (default: the config's)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="ray: N workers (default: one per GPU of the cluster; CPU workers where it has none)")
    parser.add_argument("--ray-address", metavar="ADDRESS",
                        help="ray: an existing cluster (auto, HOST:6379); default: a local one for this command")


def apply_executor_arguments(args, settings) -> str | None:
    """Put the executor arguments into ``settings``; an error message for a bad value, else None."""
    if args.workers is not None and args.workers < 1:
        return "--workers must be at least 1"
    if args.executor:
        settings.executor = args.executor
    if args.workers is not None:
        settings.workers = args.workers
    if args.ray_address:
        settings.ray_address = args.ray_address
    return None
