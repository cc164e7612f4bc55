"""Errors with one clear line: which file, what is wrong."""
from __future__ import annotations


class OCTInputError(ValueError):
    """Bad input data: the message always names the file (or item) and the problem.

    ``str(err)`` is ``"<path>: <problem>"`` so that a log line or a summary CSV row says everything.
    """

    def __init__(self, path, problem: str):
        self.path = str(path) if path is not None else "<input>"
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked (format, shapes, unsafe content); names the file."""

    def __init__(self, path, problem: str):
        self.path = str(path) if path is not None else "<checkpoint>"
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
