"""Resumable testbed training: checkpoints every few minutes, and a resumed run that is bit-identical to an
uninterrupted one on the same machine kind.

A checkpoint holds, per stage, everything a training step changes: model, optimizer, learning-rate schedule and
EMA states, the data generator, the position in the shuffled batches, torch's global random state and the losses
so far; finished stages keep what later stages need. It is written to a temporary file and renamed, so a kill
while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch


class TrainingInterrupted(RuntimeError):
    """Raised after the checkpoint of a requested stop (``stop_after``) was written: for tests of resuming."""


class Batches:
    """Endless shuffled index batches over ``n`` items, whose position can be saved and restored."""

    def __init__(self, n: int, batch: int, generator: torch.Generator):
        self.n, self.batch, self.generator = n, batch, generator
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def __next__(self) -> torch.Tensor:
        if self.perm is None or self.pos + self.batch > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
        self.pos += self.batch
        return self.perm[self.pos - self.batch:self.pos]

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos = state["perm"], state["pos"]


def capture(step: int, losses: list[float], objects: dict) -> dict:
    """The state of a training loop after ``step`` steps (``objects``: modules, optimizers, schedules, EMA,
    generators and :class:`Batches`, by name)."""
    state = {"step": step, "losses": list(losses), "rng": torch.get_rng_state()}
    for name, obj in objects.items():
        state[name] = obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()
    return state


def restore(state: dict, objects: dict) -> tuple[int, list[float]]:
    """Put ``objects`` back into a captured state; returns the step to continue from and the losses so far."""
    for name, obj in objects.items():
        if isinstance(obj, torch.Generator):
            obj.set_state(state[name])
        else:
            obj.load_state_dict(state[name])
    torch.set_rng_state(state["rng"])
    return state["step"], list(state["losses"])


class Checkpointer:
    """Saves a loop's state every ``every_s`` seconds (and at each stage's end) to ``folder/checkpoint.pt``."""

    def __init__(self, folder: str | Path, *, every_s: float = 300.0, resume: bool = False,
                 stop_after: tuple[str, int] | None = None):
        self.path = Path(folder) / "checkpoint.pt"
        self.every_s = every_s
        self.stop_after = stop_after
        self.state: dict = {"done": {}, "running": None, "log": None, "elapsed": {}}
        if resume and self.path.exists():
            self.state = torch.load(self.path, map_location="cpu", weights_only=True)
        self._last = time.monotonic()
        self._stage: tuple[str, float, float] | None = None  # stage, its seconds before this run, start time

    def begin(self, stage: str) -> None:
        """Start timing ``stage`` (its time before an interruption counts too)."""
        self._stage = (stage, self.state["elapsed"].get(stage, 0.0), time.monotonic())

    def seconds(self, stage: str) -> float:
        if self._stage is not None and self._stage[0] == stage:
            return self._stage[1] + time.monotonic() - self._stage[2]
        return self.state["elapsed"].get(stage, 0.0)

    @property
    def log(self) -> dict | None:
        return self.state["log"]

    def done(self, stage: str) -> dict | None:
        """What a finished stage left for later ones, or None if it has not finished."""
        return self.state["done"].get(stage)

    def resume(self, stage: str, objects: dict) -> tuple[int, list[float]]:
        """Put ``objects`` back where an interrupted ``stage`` stopped; returns (step, losses), (0, []) if it
        was not interrupted."""
        running = self.state["running"]
        if running is None or running[0] != stage:
            return 0, []
        return restore(running[1], objects)

    def after_step(self, stage: str, step: int, state: Callable[[], dict], log: dict) -> None:
        """Called after each step: save when the interval has passed (``state`` builds the loop's state)."""
        stop = self.stop_after == (stage, step)
        if stop or time.monotonic() - self._last >= self.every_s:
            self.state["running"] = (stage, state())
            self.state["elapsed"][stage] = self.seconds(stage)
            self._save(log)
        if stop:
            raise TrainingInterrupted(f"stopped after {stage} step {step}, as asked; resume with --resume")

    def finish(self, stage: str, keep: dict, log: dict) -> None:
        self.state["elapsed"][stage] = self.seconds(stage)
        self.state["done"][stage] = keep
        self.state["running"] = None
        self._save(log)

    def remove(self) -> None:
        """Delete the checkpoint once the run's results are written."""
        self.path.unlink(missing_ok=True)

    def _save(self, log: dict) -> None:
        self.state["log"] = log
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        torch.save(self.state, tmp)
        os.replace(tmp, self.path)
        self._last = time.monotonic()
