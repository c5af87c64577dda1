"""User-facing error types. The CLI turns these into exit code 2 without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (suite, data, address): reported plainly, exit code 2."""


class DataError(UserError):
    """A dataset cannot be found or read; the message says where we looked and how to fix it."""
