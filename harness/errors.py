"""The harness's own exception types: errors a user can cause and fix.

Each carries a message that says what went wrong and what to do; the command
lines print it without a traceback (a traceback is for bugs).
"""


class HarnessError(Exception):
    """Base class for every user-facing error."""


class ConfigError(HarnessError):
    """A config file is missing, unreadable, or lacks a field the harness needs."""


class CheckpointError(HarnessError):
    """A checkpoint does not match the model, or needs unsafe unpickling."""


class BuildError(HarnessError):
    """Exporting, simplifying, verifying or compiling the model failed."""


class DeviceError(HarnessError):
    """The cluster lacks the devices or runtime libraries asked for."""
