"""Run-time patches that make a U-Net's cost differ from step to step (token pruning) register here, so that
measurement can count them without depending on the family that installs them.

A registered patch kind gives three functions: ``describe(unet)`` returns the applied patch's spec string, or
``None`` when the U-Net carries no such patch; ``schedule_flops(target, steps, *, resolution, batch,
vae_scale_factor, text_length)`` counts a ``steps``-step schedule and returns an object with ``mean_tflops``,
``mean_attention_tflops`` and ``per_step`` (each with ``tflops``); ``apply(target, spec)`` installs the patch
a spec describes (``save`` records applied patches in the manifest and ``load`` re-applies them this way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class RuntimePatchKind:
    name: str
    describe: Callable[[object], str | None]
    schedule_flops: Callable[..., object]
    apply: Callable[[object, str], object]


_KINDS: dict[str, RuntimePatchKind] = {}


def register_runtime_patch(kind: RuntimePatchKind) -> None:
    """Register (or replace, by name) a kind of run-time patch."""
    _KINDS[kind.name] = kind


def applied_runtime_patch(unet) -> tuple[RuntimePatchKind, str] | None:
    """The registered patch kind applied to ``unet`` and its spec, or ``None``."""
    for kind in _KINDS.values():
        spec = kind.describe(unet)
        if spec is not None:
            return kind, spec
    return None


def runtime_patch_kind(name: str) -> RuntimePatchKind | None:
    return _KINDS.get(name)


def applied_runtime_patches(unet) -> dict[str, str]:
    """``{kind: spec}`` of every registered patch applied to ``unet``."""
    out = {}
    for kind in _KINDS.values():
        spec = kind.describe(unet)
        if spec is not None:
            out[kind.name] = spec
    return out


def reapply_runtime_patches(pipe, patches, folder) -> None:
    """Install the run-time patches a saved folder's manifest lists (``{kind: spec}``, or ``None``)."""
    from diffprune.errors import DiffpruneError

    if not patches:
        return
    if not isinstance(patches, dict):
        raise DiffpruneError(f"{folder}: its manifest has a malformed runtime_patches entry; the folder is damaged")
    for name, spec in sorted(patches.items()):
        kind = _KINDS.get(name)
        if kind is None:
            raise DiffpruneError(f"{folder} was saved with a '{name}' run-time patch this diffprune does not know; "
                                 "upgrade diffprune, or load with runtime_patches=False")
        try:
            kind.apply(pipe, str(spec))
        except DiffpruneError as e:
            raise DiffpruneError(f"{folder}: cannot re-apply its {name} patch '{spec}': {e}") from None
