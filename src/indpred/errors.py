"""The one exception type that means "the user asked for something wrong".

The CLI turns a :class:`UserError` into a single line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""
