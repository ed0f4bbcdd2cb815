"""Rendering for people (rich, on stderr) and for machines (JSON, on stdout)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape

from cmcp_cli.errors import CmcpError, Problem, Severity


def _console(stream_is_tty: bool, *, stderr: bool) -> Console:
    # Off a terminal (CI logs, pipes) keep lines long enough that digests are never folded.
    return Console(stderr=stderr, width=None if stream_is_tty else 200, highlight=False)


err = _console(sys.stderr.isatty(), stderr=True)


def emit_json(document: object) -> None:
    """The one way machine output is written: a single JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def line(markup: str) -> None:
    """One line of text for people, never folded: hints and messages carry commands, paths
    and digests that must stay copyable (the terminal wraps long lines visually only)."""
    err.print(markup, soft_wrap=True)


def problems(items: Iterable[Problem]) -> None:
    for problem in items:
        style = "red" if problem.severity is Severity.ERROR else "yellow"
        where = f"{escape(problem.location)}: " if problem.location else ""
        line(f"  [{style}]{problem.severity.value}[/{style}] {where}{escape(problem.message)}")
        if problem.hint:
            line(f"      [dim]hint:[/dim] {escape(problem.hint)}")


def error(exc: CmcpError) -> None:
    line(f"[bold red]error:[/bold red] {escape(exc.message)}")
    problems(exc.problems)
    if exc.hint:
        line(f"  [dim]hint:[/dim] {escape(exc.hint)}")
