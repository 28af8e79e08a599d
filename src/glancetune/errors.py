"""The one user-facing error type: a single line naming the file or key and what is wrong."""


class GlanceError(Exception):
    """Bad input. The CLI prints `error: <message>` and exits with status 2; nothing half-written is left."""
