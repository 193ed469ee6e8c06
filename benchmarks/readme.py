"""Write a benchmark table into docs/benchmarks.md (or another file) between `<!-- name -->` and `<!-- /name -->` markers."""
from __future__ import annotations

from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"  # where every benchmark writes its tables


def write_table(name: str, text: str, readme: Path = TARGET) -> None:
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    readme.parent.mkdir(parents=True, exist_ok=True)
    content = readme.read_text() if readme.exists() else ""
    if start not in content or end not in content:
        content = content.rstrip() + f"\n\n{start}\n{end}\n"
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text.strip()}\n{end}{tail}")


def publish(name: str, lines: list[str], readme: Path | None = None) -> str:
    """Join a table's lines, print it, and write it between its markers when ``readme`` is given."""
    table = "\n".join(lines)
    print(table)
    if readme is not None:
        write_table(name, table, readme)
    return table
