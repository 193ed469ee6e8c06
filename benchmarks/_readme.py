"""Write a benchmark table into README.md between `<!-- name -->` and `<!-- /name -->` markers."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def write_table(name: str, text: str, readme: Path = README) -> None:
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    content = readme.read_text()
    if start not in content or end not in content:
        content = content.rstrip() + f"\n\n{start}\n{end}\n"
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text.strip()}\n{end}{tail}")
