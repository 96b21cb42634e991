"""The compression history a pipeline carries (``pipe._diffprune["history"]``): every step that changed it,
recorded by the API that made the change and written to the manifest by ``save``."""

from __future__ import annotations

from diffprune.anatomy import is_module


def history_of(pipe) -> list[dict]:
    """The steps recorded on ``pipe`` so far (a copy)."""
    return list((getattr(pipe, "_diffprune", None) or {}).get("history", []))


def record_step(pipe, step: dict) -> None:
    """Append ``step`` (a JSON-able dict with a ``"step"`` key) to ``pipe``'s history; bare modules keep none."""
    if is_module(pipe):
        return
    info = dict(getattr(pipe, "_diffprune", None) or {})
    info["history"] = [*info.get("history", []), dict(step)]
    pipe._diffprune = info
