"""Errors the command line prints as one line, without a traceback.

Every layer may raise these (stdlib only, no imports from the rest of the package):

* :class:`UsageError`: a bad argument, configuration or input file. Exit status 2.
* :class:`ShadowscaleError`: anything else the user can fix without reading code (an optional dependency that is
  not installed, a data file that cannot be found or downloaded). Exit status 1.

Any other exception is a bug: the command line shows its traceback (exit status 1).
"""

from __future__ import annotations


class ShadowscaleError(Exception):
    """An error whose message says everything the user needs; printed without a traceback, exit status 1."""

    exit_status = 1


class UsageError(ShadowscaleError, ValueError):
    """A bad argument, configuration or input file; printed without a traceback, exit status 2."""

    exit_status = 2


class MissingExtra(ShadowscaleError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        self.feature = feature
        self.extra = extra
        self.module = module
        super().__init__(
            f"{feature} needs the optional dependency {module!r}, which is not installed: "
            f"pip install 'shadowscale[{extra}]'"
        )

    def __reduce__(self) -> tuple[type[MissingExtra], tuple[str, str, str]]:
        return (type(self), (self.feature, self.extra, self.module))
