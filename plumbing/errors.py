"""Start-up failures that end a process with one clear line instead of a traceback."""

from __future__ import annotations


class StartupError(Exception):
    """A problem an operator can fix (a bad setting, a taken port, an unreachable server).

    The message names the setting or address involved; `plumbing.cli` prints it on one line and
    exits non-zero.
    """


class ConfigError(StartupError):
    """An environment variable is missing or has a value we cannot use."""
