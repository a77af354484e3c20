"""Exceptions raised by flowsolve."""


class FlowsolveError(Exception):
    """Base class of every error flowsolve raises on purpose."""


class ConfigError(FlowsolveError, ValueError):
    """A user-supplied value is invalid; the message names the value and what was expected."""


class IntegrationError(FlowsolveError, RuntimeError):
    """An integration could not proceed (used where a status is not enough)."""


class BackendUnavailable(FlowsolveError, ImportError):
    """The requested array backend (numba, cupy) cannot be used on this machine."""
