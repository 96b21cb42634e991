"""The one exception type for mistakes a user can fix (bad paths, options, unsupported models).

The CLI prints such an error as a single line and exits with status 2; anything else is a bug and keeps
its traceback.
"""


class DiffpruneError(Exception):
    """A user-facing error: its message alone must tell the user what to change."""


def first_line(error: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors
    that wrap a library's exception."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
