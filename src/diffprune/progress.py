"""Progress output: a pipeline's own per-step bar is switched off while diffprune samples internally
(calibration), so that only diffprune's bars show, and only on a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def pipeline_bar_disabled(pipe) -> Iterator[None]:
    """Silence ``pipe``'s denoising-step bar inside the block, then restore its earlier setting."""
    before = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    pipe.set_progress_bar_config(**{**before, "disable": True})
    try:
        yield
    finally:
        pipe._progress_bar_config = before
