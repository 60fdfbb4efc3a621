"""The one exception users are meant to see: a configuration that cannot work, said up front."""


class ConfigurationError(ValueError):
    """Raised at construction or ``on_train_begin``; the message says what to change."""
