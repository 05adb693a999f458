"""`make bench`: list the benchmarks and how to run each."""

from __future__ import annotations

import ast
from pathlib import Path


def main() -> None:
    here = Path(__file__).parent
    modules = sorted(here.glob("*_bench.py"))
    if not modules:
        print("no benchmarks yet")
        return
    print("benchmarks (run one with `make bench-<area>` or `.venv/bin/python -m bench.<module>`):")
    for path in modules:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        print(f"  bench.{path.stem:<20} {doc.splitlines()[0] if doc else ''}")


if __name__ == "__main__":
    main()
