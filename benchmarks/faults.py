"""Faults and bad input (issue 5, part 4) as a table: case | what was done | outcome | data lost?

Runs the cases of ``fault_cases.py`` (the same functions ``tests/test_faults.py`` runs) in a scratch
folder and prints a markdown table; a case whose checks did not all hold says which in its outcome.

Usage:
    python benchmarks/faults.py                       # all cases (about a minute on 2 cores)
    python benchmarks/faults.py --cases huge kill_match
    python benchmarks/faults.py --readme    # also writes the table between the markers
                                                      # <!-- faults-table --> ... <!-- /faults-table -->
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from readme import TARGET, write_table
from fault_cases import CASES, CaseResult


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def table(results: list[CaseResult], seconds: float) -> str:
    rows = ["| case | what was done | outcome (message) | data lost? |", "|---|---|---|---|"]
    for r in results:
        outcome = r.outcome + (f" — **failed checks: {'; '.join(r.failures)}**" if r.failures else "")
        rows.append(f"| {_cell(r.case)} | {_cell(r.action)} | {_cell(outcome)} | {_cell(r.data_lost)} |")
    failed = sum(bool(r.failures) for r in results)
    lost = sum(bool(r.lost) for r in results)
    rows.append("")
    rows.append(f"{len(results)} cases, {len(results) - failed} with every check holding, {lost} losing data; "
                f"`python benchmarks/faults.py` in {seconds:.0f} s on {os.cpu_count()} CPU cores "
                f"({platform.machine()}), SIFT matcher, the sample scene shrunk to 320x240.")
    return "\n".join(rows)


def run(names: list[str], work: Path) -> list[CaseResult]:
    results = []
    for name in names:
        t0 = time.perf_counter()
        try:
            r = CASES[name](work)
        except Exception as e:  # a case that crashes is a row too
            r = CaseResult(name, "(the case raised)")
            r.check(False, f"{type(e).__name__}: {e}")
        print(f"{name}: {time.perf_counter() - t0:.1f} s, {'ok' if not r.failures else r.failures}",
              file=sys.stderr, flush=True)
        results.append(r)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--readme", type=Path, nargs="?", const=TARGET, default=None,
                    help="write the table(s) into this file (alone: docs/benchmarks.md)")
    ap.add_argument("--verbose", action="store_true", help="the pipeline's own log lines too")
    args = ap.parse_args()
    if not args.verbose:
        logging.getLogger("roma_sfm.pipelines").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        results = run(args.cases, args.work or Path(tmp))
    text = table(results, time.perf_counter() - t0)
    print(text)
    if args.readme:
        write_table("faults-table", text, args.readme)
    return 0 if not any(r.lost for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
