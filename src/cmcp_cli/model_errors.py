"""Turning pydantic validation errors into located, actionable `Problem`s.

Locations are dotted paths (`upstreams.bank.url`, `tools[2].name`); an unknown key gets a
did-you-mean drawn from the keys that are valid at that very place in the model.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from cmcp_cli.errors import Problem

LineLookup = Callable[[tuple[str | int, ...]], int | None]


def format_location(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def problems_from_validation(
    error: ValidationError,
    model: type[BaseModel],
    *,
    file: str | None,
    line_of: LineLookup | None = None,
    file_of: Callable[[tuple[str | int, ...]], str] | None = None,
) -> list[Problem]:
    """One located problem per validation error; `file_of` names the file of each problem
    by its location, where `file` names one for all."""
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        raw_loc = tuple(item["loc"])
        loc = document_location(model, raw_loc)
        hint = None
        if item["type"] == "extra_forbidden":
            key = str(loc[-1])
            message = f"{format_location(loc)}: unknown key {key!r}"
            valid = valid_keys_at(model, raw_loc[:-1])
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
            if close:
                hint = f"did you mean {close[0]!r}?"
            elif valid:
                hint = f"valid keys here: {', '.join(sorted(valid))}"
        elif item["type"] == "missing":
            message = f"{format_location(loc)}: required key is missing"
        else:
            message = f"{format_location(loc)}: {_strip_value_prefix(item['msg'])}"
        line = line_of(loc) if line_of is not None else None
        where = file_of(loc) if file_of is not None else file
        problems.append(Problem(message, file=where, line=line, hint=hint))
    return problems


def _strip_value_prefix(message: str) -> str:
    return message.removeprefix("Value error, ")


def document_location(model: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """`loc` without the tags pydantic inserts for tagged unions: a path in the document."""
    current: Any = model
    kept: list[str | int] = []
    for part in loc:
        if current is not None:
            current, was_tag = _step(current, part)
            if was_tag:
                continue
        kept.append(part)
    return tuple(kept)


def valid_keys_at(model: type[BaseModel], loc: Sequence[str | int]) -> set[str]:
    """The field names accepted at pydantic location `loc` (empty when not a model)."""
    current: Any = model
    for part in loc:
        current, _ = _step(current, part)
        if current is None:
            return set()
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return set(current.model_fields)
    return set()


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _union_members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(_unwrap(a) for a in typing.get_args(annotation))
    return (annotation,)


def _step(annotation: Any, part: str | int) -> tuple[Any, bool]:
    """The annotation one step down at `part`, and whether `part` was a union tag."""
    annotation = _unwrap(annotation)
    members = [m for m in _union_members(annotation) if m is not type(None)]
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    # A tagged union puts the tag value into the location: pick that member.
    if len(models) > 1:
        for member in models:
            if _tag_value(member) == part:
                return member, True
    for member in models:
        field = member.model_fields.get(str(part))
        if field is not None:
            return field.annotation, False
    for member in members:
        origin = typing.get_origin(member)
        args = typing.get_args(member)
        if origin in (dict, Mapping) and len(args) == 2:
            return args[1], False
        if origin in (list, tuple, Sequence) and args and isinstance(part, int):
            return args[0], False
    return None, False


def _tag_value(model: type[BaseModel]) -> str | None:
    """The value of the model's single-value Literal field: its tag in a tagged union."""
    for field in model.model_fields.values():
        annotation = _unwrap(field.annotation)
        if typing.get_origin(annotation) is typing.Literal:
            args = typing.get_args(annotation)
            if len(args) == 1:
                return str(args[0])
    return None
