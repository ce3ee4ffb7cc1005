"""The one exception type for failures a user can fix.

`acorn.cli` catches AcornError, prints its message on one line and exits 2.
Anything else that escapes is a bug in Acorn and keeps its traceback.
"""


class AcornError(Exception):
    """A problem with the user's input, stated with the fix: 'X is wrong; do Y'."""


class NotUTF8(AcornError):
    """An input file holds bytes that are not UTF-8. The message names the file and
    where; `acorn.cli` adds "or pass --errors replace" for commands that have that flag."""
