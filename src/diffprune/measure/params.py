"""Parameter counts per pipeline component: total, non-zero (what weight pruning changes), bytes in memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from diffprune.anatomy import model_components, sparse_kernel_weights
from diffprune.errors import DiffpruneError


@dataclass
class ComponentParams:
    class_name: str
    params: int
    nonzero: int | None  # None when the weights are on the meta device (no values to inspect)
    bytes: int
    dtype: str
    device: str
    sparsity: float | None = field(init=False)  # fraction of zero weights; None without values

    def __post_init__(self) -> None:
        known = self.nonzero is not None and self.params > 0
        self.sparsity = 1.0 - self.nonzero / self.params if known else None


@dataclass
class ParamCounts:
    components: dict[str, ComponentParams] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(c.params for c in self.components.values())


def _unique_parameters(module: nn.Module):
    seen: set[int] = set()
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def component_params(module: nn.Module, *, count_nonzero: bool = True) -> ComponentParams:
    params = list(_unique_parameters(module))
    on_meta = any(p.device.type == "meta" for p in params)
    nonzero = None
    if count_nonzero and not on_meta:
        with torch.no_grad():
            nonzero = int(sum(int(torch.count_nonzero(p)) for p in params))
    first = params[0] if params else torch.empty(0)
    return ComponentParams(
        class_name=type(module).__name__,
        params=sum(p.numel() for p in params),
        nonzero=nonzero,
        bytes=sum(p.numel() * p.element_size() for p in params),
        dtype=str(first.dtype).replace("torch.", ""),
        device=str(first.device),
    )


def count_params(obj, *, count_nonzero: bool = True) -> ParamCounts:
    """Per-component parameter counts of a pipeline (or a single module, reported as ``model``)."""
    sparse = sparse_kernel_weights(obj)
    if sparse:
        raise DiffpruneError(f"{sparse[0]} holds a semi-structured sparse GPU weight: count before "
                             "diffprune.weights.semistructured.apply or after diffprune.weights.semistructured.remove(model)")
    return ParamCounts({name: component_params(m, count_nonzero=count_nonzero)
                        for name, m in model_components(obj).items()})
