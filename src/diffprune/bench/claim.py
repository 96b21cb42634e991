"""One re-measured claim of a paper, the testbed quality claims are measured on, and the small helpers every
claims table uses."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from diffprune.evaluate import ShapesSuiteConfig, run_shapes_suite
from diffprune.io import load


@dataclass
class Claim:
    paper: str
    claim: str
    source_number: str
    measured: str
    holds: bool | None   # None: the measurement cannot decide
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "no", None: "n/a"}[self.holds]


def pct(x: float) -> str:
    return f"{x:.0%}"


def ahead(value: float, others) -> bool | None:
    """``value`` strictly ahead of every other: True; behind one: False; tied with the best: undecided."""
    best = max(others)
    return None if value == best else value > best


class Testbed:
    """A shapes testbed (``shapes`` or ``shapes-dit``) and its suite, every variant from a fresh copy of the trained
    pipeline; ``config`` needs ``prompts``, ``seed`` and ``steps``, ``bar`` is updated once per evaluation."""

    __test__ = False  # not a pytest test class

    def __init__(self, config, bar, source: str = "shapes"):
        from diffprune.testbed.evaluator import load_evaluator

        self.base = load(source)
        self.base.set_progress_bar_config(disable=True)
        self.evaluator = load_evaluator()
        self.suite = ShapesSuiteConfig(prompts=config.prompts, seed=config.seed, steps=config.steps, progress=False)
        self.bar = bar
        self.dense = self.quality(self.base)

    def copy(self):
        return copy.deepcopy(self.base)

    def quality(self, pipe) -> float:
        value = run_shapes_suite(pipe, self.suite, self.evaluator).metrics["accuracy_all"]
        self.bar.update()
        return value
