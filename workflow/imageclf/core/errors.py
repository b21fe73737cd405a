"""The errors a user can fix: each names the file or config key at fault and what to do.

The command line (cli.py) prints these as one clear line, without a traceback; anything else is
a bug and keeps its traceback."""


class UserError(ValueError):
    """Bad input: a file, a folder or a configuration value the user can fix."""


class ConfigError(UserError):
    """A configuration value is missing, misspelt or of the wrong type."""


class DataError(UserError):
    """The data set on disk is not usable; the message names the files and the fix."""


class WeightsError(UserError):
    """Pretrained weights or a checkpoint cannot be used; the message says which and why."""


class SubmissionError(UserError):
    """The predictions do not cover the test split exactly; nothing was written."""


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite; the message says what the run kept."""


def unknown_architecture(arch: str, known: list[str]) -> str:
    """The one message for a model.arch torchvision does not have (the configuration check and
    the model builder both give it)."""
    return f"model.arch: '{arch}' is not a torchvision classification model; choose one of {known}"
