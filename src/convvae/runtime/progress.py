"""Progress of a stage's steps: a live bar on a terminal, and one line of seconds per step.

The bar (tqdm, on stderr) names the step that is running, so a long step (the ONNX export, the
imputation rounds) does not look like a hang; it is off when stderr is not a terminal (DVC's
logs, CI), which get the lines only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from tqdm import tqdm


def live_bar(total: int, desc: str | None = None, enabled: bool = True, unit: str = "img") -> tqdm:
    """A progress bar drawn only on a terminal (``disable=None``) and only when ``enabled``;
    refreshed at most once a second, and erased when done."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=None if enabled else True,
        mininterval=1.0,
        leave=False,
    )


class StageSteps:
    """The named steps of one stage, run in order: ``with steps.step("figures"): ...``."""

    def __init__(self, stage: str, names: Sequence[str], log: Callable[[str], None] = print):
        self.stage = stage
        self.names = list(names)
        self.log = log
        self.seconds: dict[str, float] = {}
        self.skipped: set[str] = set()
        self._bar = live_bar(len(self.names), unit="step")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one step (``name`` must be one of the stage's names) and log its seconds."""
        self._check_new(name)
        self._bar.set_description_str(f"{self.stage}: {name}")
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self._bar.close()  # the stage stops here; its error, not a stale bar, is shown
            raise
        self.seconds[name] = time.perf_counter() - started
        self._done(f"{self.stage}: {name} in {self.seconds[name]:.1f} s")

    def skip(self, name: str, why: str) -> None:
        """Log that step ``name`` did not run, and why (no seconds are recorded for it)."""
        self._check_new(name)
        self.skipped.add(name)
        self._done(f"{self.stage}: {name} skipped: {why}")

    def _check_new(self, name: str) -> None:
        if name not in self.names:
            raise ValueError(f"unknown step {name!r} of {self.stage}; one of {self.names}")
        if name in self.seconds or name in self.skipped:
            raise ValueError(f"step {name!r} of {self.stage} has already run or been skipped")

    def _done(self, line: str) -> None:
        self._bar.update()
        self._bar.clear()
        self.log(line)
        if len(self.seconds) + len(self.skipped) == len(self.names):
            self._bar.close()
