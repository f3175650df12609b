"""Exceptions flowzoo raises for bad input: one clear message, no deep torch stack trace."""


class FlowzooError(Exception):
    """Base class of every error flowzoo raises on purpose."""


class UnknownComponentError(FlowzooError, KeyError):
    """A component name that is not registered for its kind."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class IncompatibleComponentsError(FlowzooError, ValueError):
    """Two registered components that cannot work together."""


class CheckpointError(FlowzooError, ValueError):
    """A checkpoint that is missing, corrupt, or does not match its config."""


class DataError(FlowzooError, ValueError):
    """A corpus that is empty, too short, or otherwise unusable."""


class DeviceError(FlowzooError, ValueError):
    """A device this machine does not have (CUDA without a GPU, a missing GPU index)."""


class SamplingWarning(UserWarning):
    """A sampling request that runs but deserves a word (a length far beyond the training length)."""


class PromptError(FlowzooError, ValueError):
    """A prompt or infill request that cannot be served: too long, empty, or a hole for a left-to-right model."""
