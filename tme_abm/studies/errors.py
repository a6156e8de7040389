"""The studies' error."""


class SweepError(ValueError):
    """A sweep spec or sweep folder that cannot be used (names the file and problem)."""
