"""A test double run as a real process (`python -m MODULE ...`) that, once it serves, writes
a JSON document of what a test needs to reach it (its ports and such) into its folder.
`ServiceProcess.start` waits a bounded time for that document, with the process's output in
the error when it dies or never gets there; `stop` ends it (terminate, then kill)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

STARTUP_SECONDS: Final = 30.0
STOP_SECONDS: Final = 10.0


def write_ready(folder: Path, name: str, facts: Mapping[str, Any]) -> None:
    """Write the ready document whole (a reader never sees half of it)."""
    partial = folder / f"{name}.partial"
    partial.write_text(json.dumps(dict(facts)))
    partial.replace(folder / name)


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    folder: Path
    facts: dict[str, Any]
    log: Path

    @classmethod
    def start(
        cls,
        module: str,
        arguments: Sequence[str],
        folder: Path,
        *,
        ready: str = "service.json",
        startup_seconds: float = STARTUP_SECONDS,
    ) -> ServiceProcess:
        log = folder / f"{module.rsplit('.', 1)[-1]}.log"
        with log.open("wb") as output:
            # this interpreter and a module of the test's choosing: no input from outside
            process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", module, *arguments], stdout=output, stderr=output
            )
        document = folder / ready
        deadline = time.monotonic() + startup_seconds
        while not document.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                _end(process)
                shown = log.read_text(errors="replace")
                raise RuntimeError(f"{module} did not start (no {document}):\n{shown}")
            time.sleep(0.05)
        return cls(process, folder, json.loads(document.read_text()), log)

    def stop(self) -> None:
        _end(self.process)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_SECONDS)
