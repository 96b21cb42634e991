"""The one shape every compression step returns.

Each family's entry point — ``weights.prune``, ``layers.prune`` (and ``layers.apply_preset``),
``tokens.prune`` — takes its target (a pipeline, or where the method allows it a bare model) and a config,
accepts ``progress=``, changes the target in place, records itself in the pipeline's history, and returns a
:class:`StepResult`: which family ran, a one-line summary, the seconds it took and a JSON-able record.
``diffprune.compress`` collects one per step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class StepResult(ABC):
    """What one compression step did (see the module docstring)."""

    family: ClassVar[str]

    @property
    @abstractmethod
    def seconds(self) -> float:
        """Wall-clock seconds the step took."""

    @abstractmethod
    def summary(self) -> str:
        """One line for a person: what changed, by how much."""

    @abstractmethod
    def to_json(self) -> dict:
        """Everything the step reports, as plain JSON values."""
