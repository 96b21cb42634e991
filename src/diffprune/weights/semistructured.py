"""Running 2:4-pruned Linear layers on the GPU's semi-structured sparse kernels.

A weight pruned to the 2:4 pattern (two non-zeros in every four consecutive inputs of a row) can be stored
compressed and multiplied by sparse tensor cores (NVIDIA Ampere and newer) through
``torch.sparse.to_sparse_semi_structured``. :func:`apply` swaps every eligible Linear weight of a module for that
representation; :func:`remove` puts the exact dense weights back. Both are idempotent. Without a CUDA GPU of
compute capability 8.0 or newer there is no such kernel: :func:`available` says why, and :func:`apply` refuses
with that line.
"""

from __future__ import annotations

import torch
from torch import nn

from diffprune.errors import DiffpruneError

_DENSE = "_diffprune_dense_weight"
_DTYPES = (torch.float16, torch.bfloat16)


def available() -> tuple[bool, str]:
    """Whether semi-structured sparse kernels can run here, and if not, why (one line)."""
    if not torch.cuda.is_available():
        return False, "2:4 semi-structured sparse kernels need a CUDA GPU; none is available here"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return False, (f"2:4 semi-structured sparse kernels need compute capability 8.0 or newer; this GPU has "
                       f"{major}.{minor}")
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return False, "this PyTorch has no torch.sparse.to_sparse_semi_structured"
    return True, ""


def is_two_four(weight: torch.Tensor) -> bool:
    """At most two non-zeros in every four consecutive entries of each row."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def _eligible(module: nn.Linear) -> bool:
    w = module.weight
    # the kernels' tile sizes: both dimensions multiples of 64 (fp16/bf16), on the GPU
    return (w.is_cuda and w.dtype in _DTYPES and w.shape[0] % 64 == 0 and w.shape[1] % 64 == 0
            and is_two_four(w))


def apply(model: nn.Module) -> list[str]:
    """Give every eligible 2:4 Linear of ``model`` (on a CUDA GPU, fp16 or bf16) a semi-structured sparse weight;
    returns the layer names. Calling it again changes nothing."""
    ok, why = available()
    if not ok:
        raise DiffpruneError(why)
    from torch.sparse import to_sparse_semi_structured

    done = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and _DENSE in module.__dict__:
            done.append(name)
        elif isinstance(module, nn.Linear) and _eligible(module):
            dense = module.weight.detach()
            module.__dict__[_DENSE] = dense
            module.weight = nn.Parameter(to_sparse_semi_structured(dense), requires_grad=False)
            done.append(name)
    return done


def remove(model: nn.Module) -> int:
    """Put the dense weights back (bit-exact); returns how many layers changed. Idempotent."""
    count = 0
    for module in model.modules():
        dense = module.__dict__.pop(_DENSE, None)
        if dense is not None:
            module.weight = nn.Parameter(dense, requires_grad=False)
            count += 1
    return count
