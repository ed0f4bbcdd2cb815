"""Reading `cmcp-config.yaml` as a YAML document, before it is validated: strictly
(a duplicate key is an error, not the last one winning), keeping the node tree so that
every problem found later can be reported at its line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cmcp_cli.errors import ConfigError, Problem, UsageError

ENVIRONMENT = "environment"  # what problems of a document built from the environment name


@dataclass(frozen=True)
class ConfigDocument:
    """The config data before validation: parsed from a file, with its YAML nodes kept to
    locate problems by line, or built from the environment (`path` None), with the
    variable that set each key kept to name it instead."""

    path: Path | None
    data: dict[str, Any]
    node: yaml.Node | None
    base_dir: Path  # relative paths resolve here: the file's folder, or the working directory
    variables: Mapping[str, str] = field(default_factory=dict)  # dotted key -> variable

    def line_of(self, loc: tuple[str | int, ...]) -> int | None:
        return _line_of(self.node, loc)

    def where(self, loc: tuple[str | int, ...]) -> str:
        """What a problem at `loc` names as its file: the file, or the variable that set
        the setting (the environment, when a default filled it)."""
        if self.path is not None:
            return str(self.path)
        dotted = ".".join(str(part) for part in loc)
        keys = [key for key in self.variables if dotted == key or dotted.startswith(key + ".")]
        if not keys:
            return ENVIRONMENT
        return f"{ENVIRONMENT} ({self.variables[max(keys, key=len)]})"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_document(path: Path) -> ConfigDocument:
    """Read and parse the YAML; `UsageError` if unreadable, `ConfigError` if not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"config file {path} does not exist", hint="pass --config PATH to cmcp-config.yaml"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            f"config file {path} is not valid YAML",
            problems=[Problem(_yaml_message(exc), file=str(path), line=line)],
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must be a mapping of keys to values",
            problems=[Problem("top level is not a mapping", file=str(path), line=1)],
        )
    return ConfigDocument(path=path, data=data, node=node, base_dir=path.parent)


def _yaml_message(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    return str(problem) if problem else str(exc).splitlines()[0]


def _line_of(node: yaml.Node | None, loc: tuple[str | int, ...]) -> int | None:
    """1-based line of the YAML node at `loc`, or of the nearest ancestor that exists."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for depth, part in enumerate(loc):
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    # the last step points at the key itself, where an unknown key is
                    is_last = depth == len(loc) - 1
                    child = (
                        key_node
                        if is_last and isinstance(value_node, yaml.CollectionNode)
                        else value_node
                    )
                    break
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            return line if depth else None  # a top-level key that is absent has no line
        node = child
        line = node.start_mark.line + 1
    return line
