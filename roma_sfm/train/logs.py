"""The training run's CSV logs (``log.csv``, ``val.csv``), cut back to the checkpoint on resume."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional, Sequence

from .checkpoints import write_text_atomic


class CsvLog:
    """Append-only CSV; on resume, rows after the checkpoint's step are dropped (they were lost), and
    so is a last line without its newline (a kill in the middle of an append)."""

    def __init__(self, path: Path, columns: Sequence[str], keep_until: Optional[int]):
        self.path, self.columns = path, list(columns)
        rows = []
        if keep_until is not None and path.exists():
            text = path.read_text()
            lines = text.splitlines(keepends=True)
            if lines and not lines[-1].endswith("\n"):
                lines = lines[:-1]
            rows = [r for r in csv.DictReader(lines) if int(r["step"]) <= keep_until]
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, self.columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(path, buf.getvalue())  # a kill now must not lose the rows kept

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
