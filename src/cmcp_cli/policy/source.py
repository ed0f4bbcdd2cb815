"""Locating Cedar policies in their source text.

cedarpy reports parse and validation errors without positions. Cedar policies are
statements ended by `;` outside string literals and `//` comments, so a small lexer can
find where each one starts; parsing statements one by one then names the line of the
first that fails, and the n-th statement is the policy Cedar calls `policy<n>`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Statement:
    index: int  # position in the file, as in Cedar's positional id policy<index>
    line: int  # 1-based line of the statement's first token (its first annotation, if any)
    text: str
    terminated: bool  # ends with `;`


def split_statements(text: str) -> list[Statement]:
    """Split Cedar policy text into statements, skipping comment-only and blank stretches."""
    statements: list[Statement] = []
    start = 0
    first_token_line: int | None = None
    line = 1
    i = 0
    length = len(text)
    while i < length:
        char = text[i]
        if char == "\n":
            line += 1
        elif char == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = length if end == -1 else end
            continue
        elif char.isspace():
            pass
        else:
            if first_token_line is None:
                first_token_line = line
                start = i
            if char == '"':
                i, line = _skip_string(text, i, line)
                continue
            if char == ";":
                statements.append(
                    Statement(len(statements), first_token_line, text[start : i + 1], True)
                )
                start = i + 1
                first_token_line = None
        i += 1
    if first_token_line is not None:
        statements.append(Statement(len(statements), first_token_line, text[start:], False))
    return statements


def _skip_string(text: str, i: int, line: int) -> tuple[int, int]:
    """Index just past the string literal opening at `i`, and the line reached."""
    i += 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "\n":
            line += 1
        elif char == '"':
            return i + 1, line
        i += 1
    return i, line


def line_of_offset(data: bytes, offset: int) -> int:
    """1-based line number of a byte offset."""
    return data.count(b"\n", 0, offset) + 1
