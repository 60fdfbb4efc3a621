"""The one exception users are meant to see: a configuration that cannot work, said up front; and the
exit codes every command ends with, for scripts."""

#: Done; something asked about is missing, ambiguous, still pending or rejected; bad usage or configuration.
OK, FAILED, USAGE = 0, 1, 2


class ConfigurationError(ValueError):
    """Raised at construction or ``on_train_begin``; the message says what to change."""
