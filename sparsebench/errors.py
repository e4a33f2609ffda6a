"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class SparsebenchError(Exception):
    """A problem with the user's input (bad name, bad file, impossible option)."""


class UnknownNameError(SparsebenchError, KeyError):
    """A name that is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""
