"""The one error tree of cMCP.

Every failure a user can cause or fix is a `CmcpError`: it carries a message, optional
problems (each located at a file and line when there is one), a hint naming the fix and
the process exit code. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # the input was read and something about it is wrong
    USAGE = 2  # unusable arguments or unreadable input
    NOT_VERIFIABLE = 3  # valid, but not hardware-attested or not verifiable here


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input, located as precisely as we can."""

    message: str
    file: str | None = None
    line: int | None = None
    hint: str | None = None
    severity: Severity = Severity.ERROR

    @property
    def location(self) -> str | None:
        if self.file is None:
            return None
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def to_json(self) -> dict[str, object]:
        return {
            "severity": self.severity.value,
            "file": self.file,
            "line": self.line,
            "message": self.message,
            "hint": self.hint,
        }

    def __str__(self) -> str:
        prefix = f"{self.location}: " if self.location else ""
        return f"{prefix}{self.message}"


class CmcpError(Exception):
    """Base of every user-facing failure."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(
        self,
        message: str,
        *,
        problems: Iterable[Problem] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.hint = hint

    def to_json(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "exit_code": int(self.exit_code),
            "problems": [p.to_json() for p in self.problems],
        }


class UsageError(CmcpError):
    """Arguments that cannot be used, or input that cannot be read at all."""

    exit_code = ExitCode.USAGE


class ConfigError(CmcpError):
    """The configuration, or something it references, is wrong."""


class BundleError(CmcpError):
    """A policy bundle cannot be loaded: unreadable, malformed, or failing its schema."""


class CatalogError(CmcpError):
    """The tool catalog cannot be loaded or contradicts itself."""


class PolicyRequestError(CmcpError):
    """A request cannot be expressed to Cedar; the caller must treat it as a deny."""
