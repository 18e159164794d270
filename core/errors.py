"""Errors a user can act on: what went wrong, with which file or value, and what to do."""


class UserError(Exception):
    """A problem caused by input or environment, shown to the user as-is.

    `message` says what was wrong; `hint` says what the user can do about it.
    Pages show both in an error box; the CLI prints them and exits non-zero.
    """

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()
