"""The token family's entry point in the shape every family shares: ``prune(target, config, progress=...)``
patches the U-Net, records the step in the pipeline's history and returns a :class:`TokenPruneResult`.

Token pruning changes no weight: the patch is installed at run time (``apply`` / ``remove``), and a saved
pipeline carries its spec so that :func:`diffprune.load` installs it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from diffprune.history import record_step
from diffprune.results import StepResult

from .config import TokenPruningConfig
from .patch import active_patch, apply


@dataclass
class TokenPruneResult(StepResult):
    """The spec installed and the number of attention modules it patched."""

    family: ClassVar[str] = "tokens"
    spec: str
    sites: int
    seconds: float = 0.0

    def summary(self) -> str:
        return f"{self.spec} on {self.sites} attention or transformer blocks (installed at run time)"

    def to_json(self) -> dict:
        return {"spec": self.spec, "sites": self.sites, "seconds": self.seconds}


def prune(target, config: TokenPruningConfig | None = None, *, progress: bool = False) -> TokenPruneResult:
    """Install token pruning on ``target`` (a pipeline or a bare U-Net) and record it. Installing is
    instantaneous, so ``progress`` shows nothing; it is accepted so that every family is called alike."""
    start = time.perf_counter()
    config = config or TokenPruningConfig()
    apply(target, config)
    record_step(target, {"step": "prune-tokens", "spec": config.spec()})
    return TokenPruneResult(spec=config.spec(), sites=len(active_patch(target).runtime.sites),
                            seconds=round(time.perf_counter() - start, 3))
