"""One exception family for everything a user can get wrong.

The CLI turns a :class:`BirdclefError` into a one-line message and a non-zero exit code;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class BirdclefError(Exception):
    """Base class of the errors caused by input (files, configs, arguments), not by a bug."""


class AudioError(BirdclefError):
    """An audio file that cannot be used: missing, empty, undecodable, silent-length or non-finite.

    Attributes:
        path: the offending file.
        reason: what is wrong with it, in a few words ("file not found", "holds NaN or Inf samples").
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DatasetError(BirdclefError):
    """A dataset folder or metadata file that does not follow the BirdCLEF layout."""


class SubmissionError(BirdclefError):
    """A submission or solution table whose rows or columns do not line up."""


class ConfigError(BirdclefError, ValueError):
    """A configuration key or value that is unknown or out of range."""


class BirdclefWarning(UserWarning):
    """Something a user should hear about that does not stop the job: an entry passed over among the
    recordings, a damaged state file set aside and redone. The CLI prints each as one line."""
