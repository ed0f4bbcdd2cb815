"""The value types every section of `cmcp-config.yaml` is built from.

Paths are resolved against the folder of the config file (given as the validation
context's `base_dir`), never against the working directory of whoever started the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    return value if value.is_absolute() or base is None else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
NonEmpty = Annotated[str, Field(min_length=1)]


class Section(BaseModel):
    """A section of the config: unknown keys are errors, values are fixed once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
