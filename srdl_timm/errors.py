"""The package's expected-error types: what a user can cause and fix (bad data, bad weights, bad flags, I/O).

The console scripts' one error boundary (:func:`srdl_timm.cli.run_cli`) prints these as one or two lines naming
the file, flag or value at fault and exits with ``exit_code``; anything else keeps its traceback (a bug).
Library callers get ordinary exceptions: every class here also derives from the builtin a caller would expect
(``ValueError`` for bad values, ``RuntimeError`` for failed operations), so ``except ValueError`` keeps working.
"""

__all__ = ['SRDLError', 'InputError', 'OperationError']


class SRDLError(Exception):
    """Base of every expected error. ``exit_code``: 2 usage/input error (the default), 1 failure of the run."""

    exit_code: int = 2


class InputError(SRDLError, ValueError):
    """A file, flag or value the user gave is wrong (malformed, missing, mismatched). Exit status 2."""

    exit_code = 2


class OperationError(SRDLError, RuntimeError):
    """A run failed for a reason the user can act on (non-finite loss, out of memory, export check). Exit 1."""

    exit_code = 1
