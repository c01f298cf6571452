"""The one error type of the export tools: a message for the user, never a traceback."""

from __future__ import annotations


class ExportError(ValueError):
    """Bad input to minfer-export or minfer-compare; the message names the problem."""
