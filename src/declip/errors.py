"""The failures a user can meet and fix: each carries a one-line message that names the file, key or step.

The CLI prints these as one line and exits non-zero (``--debug`` shows the traceback); anything else is a bug
and keeps its traceback. A leaf module: every layer raises these without importing the layers above it.
"""
from __future__ import annotations


class DeclipError(Exception):
    """Base of the expected failures."""


class ConfigError(DeclipError, ValueError):
    """A configuration problem; the message names the key and its source (file or command-line item)."""


class DataError(DeclipError):
    """A data file, folder or shard set that cannot be used at all (missing, empty, wrong columns)."""


class DataQualityError(DeclipError):
    """Too many unusable samples: the run stops instead of training on what is left."""


class CheckpointError(DeclipError):
    """A checkpoint that is missing, truncated, foreign, corrupt, or does not fit this run."""


class RunDirError(DeclipError):
    """The output folder holds another run, or nothing to resume."""


class DeviceError(DeclipError):
    """The requested accelerator is not there, or there are fewer of them than local ranks."""


class NonFiniteError(DeclipError):
    """NaN or inf in a loss, a gradient, a buffer or the weights."""


def os_error_text(error: OSError) -> str:
    """An OS error as a user reads it: the file and the reason (``/x/y: Permission denied``), without Python's
    ``[Errno 13]`` prefix and quotes."""
    why = error.strerror or str(error)
    if error.filename is None:
        return why
    target = f" -> {error.filename2}" if error.filename2 is not None else ""
    return f"{error.filename}{target}: {why}"
