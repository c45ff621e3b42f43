"""One exception type for user mistakes, so the CLI can print it without a traceback."""


class NumclipError(Exception):
    """A user-facing error: bad params, bad data, a missing file. The message names what and where."""
