"""One exception hierarchy for nbship.

Every error a user can cause carries *where* (notebook, cell index and id,
line) and *what to do*. The CLI prints ``str(error)`` and exits with
``error.exit_code``; no traceback reaches the user for a mistake of theirs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A place in a notebook: cell index (0-based, as nbformat counts), id, line (1-based)."""

    notebook: str
    cell: int | None = None
    cell_id: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        parts = [self.notebook]
        if self.cell is not None:
            cell = f"cell {self.cell}"
            if self.cell_id:
                cell += f" (id {self.cell_id})"
            parts.append(cell)
        if self.line is not None:
            parts.append(f"line {self.line}")
        return ", ".join(parts)


class NbshipError(Exception):
    """Base of every error nbship raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, where: Location | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class UnusableInputError(NbshipError, ValueError):
    """The input is not a notebook nbship can read (bad JSON, nbformat 3, not a file...)."""

    exit_code = 2


class AnalysisError(NbshipError):
    """The step graph has problems that stop compilation (see ``nbship check``)."""

    exit_code = 1


class ParameterError(NbshipError, ValueError):
    """A ``-p name=value`` does not match the notebook's parameters cell."""

    exit_code = 2


class CompileError(NbshipError):
    """The step graph could not be turned into a KFP pipeline."""

    exit_code = 1


class BackendUnavailableError(NbshipError):
    """An optional backend (Kale, a KFP cluster, ...) is not usable here."""

    exit_code = 2


class RunError(NbshipError):
    """A pipeline run failed; ``where`` points at the failing notebook cell when known."""

    exit_code = 1


class SerializationError(NbshipError, TypeError):
    """A value crossing a step boundary cannot be saved or loaded."""

    exit_code = 1


class ToolMissingError(NbshipError):
    """A program a command needs (buildah, skopeo, the registry...) is not installed."""

    exit_code = 2


class ServeError(NbshipError):
    """A model cannot be served (no serve cell, a failed run, values missing or refused)."""

    exit_code = 1


class ReleaseError(NbshipError):
    """Building, pushing or reading an image or a release failed."""

    exit_code = 1
    status: int | None = None  # the registry's HTTP status, when it answered with an error


class SchedulerError(NbshipError):
    """The training scheduler cannot start, stop or be read."""

    exit_code = 1
