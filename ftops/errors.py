"""User-facing errors: one paragraph that names the file, row or key and what to do.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class FtopsError(Exception):
    """An error the user can fix; its message is the whole explanation."""


class ConfigError(FtopsError):
    pass


class DataError(FtopsError):
    pass


class ModelError(FtopsError):
    pass
