"""The one exception type for a user's mistake: the CLI prints its message, no traceback."""


class UserError(Exception):
    """A problem the user can fix (bad file, bad argument, bad recipe).

    The message must name the file or option and say what is wrong; the CLI prints it on one
    line to stderr and exits with status 2.
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
