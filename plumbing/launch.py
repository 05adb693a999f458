"""Tiny launcher: `python -m plumbing.launch PARENT_PID PROGRAM ARGS...`.

Asks Linux to SIGTERM this process when its parent dies, then execs PROGRAM (the setting
survives exec). It lets a parent that holds gRPC state start children without `preexec_fn`:
with one, CPython must fork(), which runs gRPC's atfork handlers and can deadlock inside them;
without one it uses posix_spawn / vfork, which run no atfork handlers at all.
"""

from __future__ import annotations

import os
import sys

from plumbing.process import terminate_with_parent


def main() -> None:
    parent, program = int(sys.argv[1]), sys.argv[2:]
    terminate_with_parent()
    if os.getppid() != parent:  # the parent died before we asked: nobody will stop us
        sys.exit(1)
    os.execvp(program[0], program)


if __name__ == "__main__":
    main()
