"""Exceptions raised by prunedata. All derive from ``PruneDataError`` (a ``ValueError``)."""


class PruneDataError(ValueError):
    """Base class: a bad input or state, with a message that says what to do."""


class SelectionMismatchError(PruneDataError):
    """A selection file was made for another dataset (length, key set or fingerprint differ)."""


class SelectionFormatError(PruneDataError):
    """A selection file is unreadable, of an unknown format version, or internally inconsistent."""


class LossShapeError(PruneDataError):
    """Per-sample losses are missing, reduced, or do not match the batch's sample ids."""


class NonFiniteLossError(PruneDataError):
    """A per-sample loss is NaN or infinite."""


class MissingDependencyError(PruneDataError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class OutputError(PruneDataError, OSError):
    """An output file or folder cannot be written (read-only, full disk, missing permission).

    ``errno``/``filename`` carry the failed call's error number and the file meant to be written."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointError(PruneDataError):
    """A checkpoint is unreadable, damaged, or does not fit the objects it should restore."""


class RecipeMismatchError(CheckpointError):
    """A checkpoint was written by a run with another recipe (method, model, lr, seed, batch size, ...)."""


class OptionError(PruneDataError, TypeError):
    """An option (``--option KEY=VALUE``, keyword argument) is unknown or has a bad value."""
