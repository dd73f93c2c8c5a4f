"""The one base class for errors a user can fix, and the stage error.

A ``UserError`` is raised for what the person running the pipeline can change: a param, an input
file, a missing or stale upstream output. Its message is one line naming the file or the param
and, where there is one, the fix. The stage entry point (``pipeline.stage``) prints it as
``<stage>: <message>`` and exits with status 1, without a traceback. Anything else is a bug and
keeps its traceback.

More specific errors (``ParamsError``, ``ShardError``, ``MediaError``, ...) subclass it where they
are raised; a stage that cannot go on with its inputs raises ``StageError``.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message is one line naming the file or param."""


class StageError(UserError, RuntimeError):
    """A stage cannot go on with its inputs (no data, outputs of another run, a bad combination)."""
