"""The root of every exception dzone-pg raises on purpose, so a caller can tell ours from a library's."""


class DzoneError(Exception):
    """Base of every dzone-pg exception; the message says what went wrong and what to do."""
