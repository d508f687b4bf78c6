"""MLflow's routine chatter kept off a stage's output, every other line passed on as written."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# What MLflow's registry prints to stderr itself when a model version is created; the stages
# print their own line ("registered <name> version <n>").
_REGISTRY_CHATTER = ("Registered model ", "Created version ", "Successfully registered model ")


class _WithoutChatter(io.TextIOBase):
    """A text stream that passes every line on to ``stream`` as soon as it is complete, except
    the registry's own prints (_REGISTRY_CHATTER)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.partial = ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            if not line.startswith(_REGISTRY_CHATTER):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def close_line(self) -> None:
        """Pass on an unfinished last line."""
        if self.partial and not self.partial.startswith(_REGISTRY_CHATTER):
            self.stream.write(self.partial)
        self.partial = ""


@contextmanager
def quiet_model_logging() -> Iterator[None]:
    """Logging and registering a model without MLflow's routine messages: the pyfunc's INFO
    "Validating input example against model signature" and the registry's own prints. Every
    other line written to stderr meanwhile goes through as it is written."""
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    pyfunc_logger.setLevel(logging.WARNING)
    filtered = _WithoutChatter(sys.stderr)
    try:
        with contextlib.redirect_stderr(filtered):
            yield
    finally:
        filtered.close_line()
        pyfunc_logger.setLevel(level)
