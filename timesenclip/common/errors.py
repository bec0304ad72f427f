"""Error types shared by the whole package."""


class TimeSenCLIPError(ValueError):
    """A user-facing error: its message says what was wrong and what to do.

    The command line prints these as one paragraph, without a traceback.
    """


class TrainingError(TimeSenCLIPError):
    """Training cannot start or continue (data, resume or output problems)."""
