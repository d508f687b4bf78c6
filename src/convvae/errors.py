"""Errors a user can fix. The CLI prints each as one line; tracebacks only with --debug."""


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
