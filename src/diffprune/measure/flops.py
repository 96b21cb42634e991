"""FLOPs of one call of a module, attention included, counted by ``torch.utils.flop_counter``.

Two gaps of ``FlopCounterMode`` are closed here. The fused CPU attention kernel
(``_scaled_dot_product_flash_attention_for_cpu``) has no formula, so it counts as 0; we register one.
And by default the call runs on the ``meta`` device (parameters swapped for meta tensors with
``torch.func.functional_call``): no arithmetic is done, SDPA decomposes into the two batched matmuls it
really costs, and even an SD-XL U-Net at 1024² is counted in seconds. The counted module runs its real
``forward``, so run-time patches (token pruning) and removed layers are reflected in the count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

# Operators whose FLOPs are attention (scores and weighted sums), as opposed to projections and convs.
ATTENTION_OPS = ("bmm", "baddbmm", "scaled_dot_product", "flash_attention", "efficient_attention",
                  "flex_attention")


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _extra_formulas() -> dict:
    aten = torch.ops.aten
    formulas = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flops
    return formulas


@dataclass
class FlopCount:
    """FLOPs (multiply and add counted separately: FLOPs = 2 x MACs) of one call."""

    total: int
    attention: int
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def tflops(self) -> float:
        return self.total / 1e12

    @property
    def macs(self) -> int:
        return self.total // 2

    def __add__(self, other: FlopCount) -> FlopCount:
        ops = dict(self.by_op)
        for op, n in other.by_op.items():
            ops[op] = ops.get(op, 0) + n
        return FlopCount(self.total + other.total, self.attention + other.attention, ops)


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also knows the fused CPU attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=_extra_formulas())


def _summarise(counter: FlopCounterMode) -> FlopCount:
    by_op = {str(op).split(".")[-1] if "." in str(op) else str(op): int(n)
             for op, n in counter.get_flop_counts().get("Global", {}).items()}
    attention = sum(n for op, n in by_op.items() if any(key in op for key in ATTENTION_OPS))
    return FlopCount(total=int(counter.get_total_flops()), attention=attention, by_op=by_op)


class _MethodCall(nn.Module):
    """Lets ``functional_call`` run a method other than ``forward`` (e.g. ``vae.decode``)."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.inner = module
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.inner, self.method)(*args, **kwargs)


def to_meta(value):
    """``value`` with every tensor (also inside dicts, lists and tuples) replaced by an empty one on ``meta``."""
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, dict):
        return {k: to_meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_meta(v) for v in value)
    return value


def meta_state(module: nn.Module) -> dict:
    """``module``'s parameters and buffers (non-persistent ones too, e.g. PixArt's position table) as ``meta``
    stand-ins, one entry per tensor (tied weights, like T5's shared embedding, appear once), for
    ``torch.func.functional_call``."""
    named = [*module.named_parameters(), *module.named_buffers()]
    return {name: to_meta(tensor) for name, tensor in named}


def count_flops(module: nn.Module, *args, method: str = "forward", on_meta: bool = True,
                **kwargs) -> FlopCount:
    """FLOPs of ``module.<method>(*args, **kwargs)``.

    ``on_meta=True`` (default) runs on meta stand-ins of the parameters and inputs: exact shapes, no
    arithmetic, no memory. ``on_meta=False`` runs the call for real and counts what executes.
    """
    target = module if method == "forward" else _MethodCall(module, method)
    with torch.no_grad():
        if not on_meta:
            with flop_counter() as counter:
                target(*args, **kwargs)
            return _summarise(counter)
        state = meta_state(target)
        args, kwargs = to_meta(args), to_meta(kwargs)
        with flop_counter() as counter:
            torch.func.functional_call(target, state, args, kwargs, tie_weights=True, strict=False)
    return _summarise(counter)
