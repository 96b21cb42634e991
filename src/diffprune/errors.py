"""The one exception type for mistakes a user can fix (bad paths, options, unsupported models).

The CLI prints such an error as a single line and exits with status 2; anything else is a bug and keeps
its traceback.
"""


class DiffpruneError(Exception):
    """A user-facing error: its message alone must tell the user what to change."""
