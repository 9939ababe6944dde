"""Exceptions that the CLI turns into one-line messages and exit codes."""


class KpcodecError(Exception):
    """Bad data or a failed operation: the CLI prints the message and exits 1."""

    exit_code = 1


class KpcFormatError(KpcodecError):
    """A .kpc file is malformed: bad magic, bad CRC, short chunk, bad field."""


class KpcVersionError(KpcFormatError):
    """A .kpc file has a major version this decoder does not understand."""


class VideoError(KpcodecError):
    """An input video is missing, unreadable, not a video, or has no frames."""


class ModelError(KpcodecError):
    """Weights are missing, fail their sha256 check, or a model name is unknown."""


class UsageError(KpcodecError):
    """Arguments that make no sense together: exit 2, like a usage error."""

    exit_code = 2


class OutputExistsError(UsageError):
    """An output file exists and --force was not given."""
