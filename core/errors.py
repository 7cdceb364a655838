"""Errors a user can fix from the message alone.

The command lines (`core.cli_util.run_main`) print a `UserError` as one line and exit 2; anything else is a
bug and keeps its traceback. `LAYERSYNC_DEBUG=1` (or `--debug`) shows the traceback of a UserError too. The
subclasses are also the builtin error they replace, so `except ValueError` and the like still catch them.
"""

from __future__ import annotations


class UserError(Exception):
    """A setting, file or count the user can fix; the message names it and says what is valid."""


class UserValueError(UserError, ValueError):
    """A bad value or input: a setting out of range, a count too small, a malformed file."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (or must provide) is not there."""


class UserKeyError(UserError, KeyError):
    """An unknown name (class, tag, entry) the user gave."""

    def __str__(self) -> str:  # KeyError quotes its argument; a message is shown as written
        return str(self.args[0]) if self.args else ""


class UserNotImplementedError(UserError, NotImplementedError):
    """A combination of settings that is not supported; the message says which one is."""


class UserRuntimeError(UserError, RuntimeError):
    """A run or file in a state the command cannot continue from (e.g. a full disk)."""
