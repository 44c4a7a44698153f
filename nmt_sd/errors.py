"""User-facing errors: raised for bad input, printed by the CLI as one line (no traceback)."""


class NmtSdError(Exception):
    """A problem with the user's input (file, flag, checkpoint, corpus), not a bug.

    The message must name the offending file, line or flag.
    """
