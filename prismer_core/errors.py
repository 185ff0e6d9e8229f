"""The one error base class the CLI turns into a one-line message and a non-zero exit."""


class PrismerError(Exception):
    """A problem the user can act on (bad input, unknown expert, unusable plugin...)."""
