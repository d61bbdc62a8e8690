"""User-facing errors.

Every mistake a user can make (a config field, a trace row, a deployment that cannot fit) is raised
as a `ServesimError` whose message is one line naming the culprit and the fix. The CLI prints it
and exits with code 2; nothing else in the code base decides how errors look.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class ServesimError(Exception):
    """A problem with the user's input, reported in one line (CLI exit code 2)."""


class ConfigError(ServesimError):
    """A config value is missing, malformed or inconsistent."""


class CatalogError(ServesimError):
    """An unknown GPU, link or model name, or a malformed catalogue entry."""


class DeploymentError(ServesimError):
    """The deployment cannot exist: the model does not fit, TP does not divide the heads, ..."""


class TraceError(ServesimError):
    """A workload trace is malformed (missing column, negative length, unsorted time, ...)."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean a, b?)' for the closest names, or '' when none is close."""
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=n, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""
