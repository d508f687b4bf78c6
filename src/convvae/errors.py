"""Errors a user can fix, and the one wrapper (CLI and stages) that prints each as one line.

Tracebacks only with --debug or CONVVAE_DEBUG=1.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

from convvae.runtime.allocator import keep_freed_memory


class ConvVAEError(Exception):
    """Base class: the message says what is wrong, where, and how to fix it."""


class ConfigError(ConvVAEError):
    """params.yaml (or a CLI option) is malformed, has an unknown key, or a value out of range."""


class DataError(ConvVAEError):
    """A data file is missing, truncated, corrupt, or does not match the model."""


class CheckpointError(ConvVAEError):
    """A model or checkpoint file is missing, unreadable, or of the wrong shape."""


class TrainingDivergedError(ConvVAEError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrackingError(ConvVAEError):
    """The MLflow tracking store is unreachable or refuses a request."""


DEBUG_ENV = "CONVVAE_DEBUG"


def debug_requested() -> bool:
    """Tracebacks instead of one-line errors: CONVVAE_DEBUG=1 (or `convvae --debug`)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


_NO_ROOM = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file larger than the process's file-size limit",
}


def exit_on_error(action: Callable[[], None], debug: bool = False) -> None:
    """Run ``action``; a ConvVAEError prints as one line on stderr and exits with code 2."""
    try:
        action()
    except ConvVAEError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted; finished epochs are kept in the checkpoint", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        # The reader of stdout left (`convvae score ... | head -1`): stop as a program killed
        # by SIGPIPE would, without a traceback; stdout goes to /dev/null so that Python's
        # own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None
    except OSError as err:
        # A full disk, a quota or a file-size limit (ulimit -f), anywhere in a stage or
        # command: one line, not a traceback.
        if debug or err.errno not in _NO_ROOM:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(
            f"error: {_NO_ROOM[err.errno]}{where}; free space (or point the outputs elsewhere, "
            "or raise the limit) and re-run: finished files and checkpoints are kept",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def run_stage(main: Callable[[], None]) -> None:
    """Run a pipeline stage: one-line errors, tracebacks with CONVVAE_DEBUG=1; the allocator
    keeps freed memory (``convvae.runtime.allocator``)."""
    keep_freed_memory()
    exit_on_error(main, debug=debug_requested())
