"""The command line that reproduces a benchmark run, for the note under its table in docs/benchmarks.md."""
from __future__ import annotations

import argparse


def command_line(script: str, ap: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``python benchmarks/<script>`` followed by every option of ``args`` that is not at its default."""
    parts = [f"python benchmarks/{script}"]
    for action in ap._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value is None or value == action.default:
            continue
        if isinstance(value, bool) or (action.nargs == "?" and value == action.const):  # a flag given alone
            parts.append(action.option_strings[0])
            continue
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{action.option_strings[0]} {shown}")
    return " ".join(parts)
