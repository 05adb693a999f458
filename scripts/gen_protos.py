"""Generate Python code (+ mypy stubs) from protos/ into a target directory (default: gen/).

`make proto` writes gen/; `make check-proto` generates into a temporary directory and compares,
so a stale gen/ fails the tests.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> None:
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    # protoc finds the mypy plugins on PATH; they live beside this interpreter in the virtualenv.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *files,
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    # Every directory on the way down is a regular package, so imports work from an installed tree.
    for directory in [out / "laiwang", *(p for p in (out / "laiwang").rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()


def differences(left: Path, right: Path) -> list[str]:
    found: list[str] = []
    comparison = filecmp.dircmp(left, right, ignore=["__pycache__"])
    stack = [(comparison, "")]
    while stack:
        cmp, prefix = stack.pop()
        found += [f"only in gen/: {prefix}{name}" for name in cmp.left_only]
        found += [f"missing from gen/: {prefix}{name}" for name in cmp.right_only]
        found += [f"stale: {prefix}{name}" for name in cmp.diff_files]
        stack += [(sub, f"{prefix}{name}/") for name, sub in cmp.subdirs.items()]
    # dircmp compares shallowly by stat; confirm content for files it called equal.
    for path in right.rglob("*.py*"):
        rel = path.relative_to(right)
        mine = left / rel
        if mine.exists() and mine.read_bytes() != path.read_bytes() and f"stale: {rel}" not in found:
            found.append(f"stale: {rel}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if gen/ differs from a fresh generation")
    args = parser.parse_args()
    target = ROOT / "gen"
    if not args.check:
        shutil.rmtree(target / "laiwang", ignore_errors=True)
        generate(target)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        problems = differences(target, Path(tmp)) if target.exists() else ["gen/ is missing"]
    if problems:
        print("generated code is stale; run `make proto`:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("generated code is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
