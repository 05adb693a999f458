"""The supervisor, stack launcher and demo data are dev-only: no production process loads them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_service_gateway_or_shared_plumbing_module_imports_the_dev_package() -> None:
    production = [*ROOT.glob("services/**/*.py"), *ROOT.glob("gateway/**/*.py"), *ROOT.glob("plumbing/*.py")]
    # The CLI's `run` and `demo` commands are the dev entry points; they import plumbing.dev lazily.
    production = [p for p in production if p != ROOT / "plumbing" / "cli.py"]
    assert len(production) > 50
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p) if m.startswith("plumbing.dev"))
        for p in production
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_laiwang_serve_path_does_not_load_the_dev_package() -> None:
    probe = (
        "import sys, plumbing.cli, plumbing.launch, gateway.main, services.messaging.main\n"
        "print(sorted(m for m in sys.modules if m.startswith('plumbing.dev')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
