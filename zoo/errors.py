"""Errors raised for input a user can fix."""

from __future__ import annotations


class ZooInputError(ValueError):
    """Bad input: the message is one line that says what is wrong and what to do.

    The command line prints it to stderr and exits with status 2.
    """
