"""Floating-point precision at loading: the dtype names diffprune accepts, the keyword diffusers takes them under,
and the rule that a pipeline loaded without a dtype comes out in one precision."""

from __future__ import annotations

import torch

from diffprune.anatomy import model_components
from diffprune.errors import DiffpruneError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"fp16"``, ``"bf16"``, ``"fp32"`` (and their long names) or a ``torch.dtype``; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise DiffpruneError(f"unknown dtype '{dtype}' (choose from fp32, fp16, bf16)") from None


def dtype_kwargs(dtype: torch.dtype | None) -> dict:
    """The ``from_pretrained`` keyword for ``dtype`` in the installed diffusers (none for None)."""
    if dtype is None:
        return {}
    import diffusers

    # diffusers 0.40 renamed ``torch_dtype`` to ``dtype``; older releases only know the former.
    major, minor = (int(x) for x in diffusers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (0, 40) else {"torch_dtype": dtype}


def floating_dtypes(obj) -> set[torch.dtype]:
    """The floating-point dtypes of the parameters and buffers of a pipeline's models (or of one module)."""
    return {t.dtype for m in model_components(obj).values() for t in (*m.parameters(), *m.buffers())
            if t.is_floating_point()}


def one_precision(pipe) -> None:
    """Bring a pipeline whose models hold more than one floating-point dtype to fp32, in place.

    Loaded without a dtype, diffusers' models come in fp32 while transformers keeps a text encoder saved in fp16
    in fp16; such a pipeline cannot run (a half text encoding meets fp32 attention weights). fp32 is diffusers'
    own default and loses nothing."""
    if len(floating_dtypes(pipe)) > 1:
        for module in model_components(pipe).values():
            module.to(torch.float32)
