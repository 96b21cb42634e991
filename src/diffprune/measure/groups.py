"""A diffusion transformer's parameters and FLOPs split by role.

Some parameters cost almost nothing per call: the AdaLN modulation layers of SD3, Flux and PixArt read one
conditioning vector per image, not every token, so they hold a large share of the parameters (about 27 % of
FLUX.1-dev's) and a tiny share of the FLOPs. Parameter counts alone overstate what pruning them saves; this split
shows it. Roles are read from diffusers' module names:

- ``attention``: query/key/value/output projections (image and text streams) and their q/k norms, plus the
  attention matmuls themselves;
- ``feed-forward``: MLPs of both streams (Flux's single blocks: ``proj_mlp`` and the joint ``proj_out``);
- ``modulation``: AdaLN layers that turn the conditioning vector into per-block shifts, scales and gates;
- ``embedding``: patch, position, timestep, guidance and text (caption/context) embedders;
- ``output``: the final norm and projection back to latent patches;
- ``other``: anything else (e.g. Sana's Mix-FFN convolutions are ``feed-forward``; unknown modules land here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .flops import ATTENTION_OPS, flop_counter, meta_state, to_meta

ROLES = ("attention", "feed-forward", "modulation", "embedding", "output", "other")
_RULES = (  # first match wins; patterns are matched against the parameter's module path
    ("modulation", r"(^|\.)norm(1|1_context|2|2_context)?\.linear$|^norm_out\.linear$|^(adaln_single|time_embed)\.linear$"
                   r"|\.scale_shift_table$"),
    ("embedding", r"^(x_embedder|pos_embed|patch_embed|context_embedder|caption_projection|caption_norm"
                  r"|time_text_embed|time_embed|adaln_single\.emb)(\.|$)"),
    ("output", r"^(norm_out|proj_out|scale_shift_table)(\.|$)"),
    ("attention", r"(^|\.)(attn|attn1|attn2|attn_2)\."),
    ("feed-forward", r"(^|\.)(ff|ff_context|proj_mlp|proj_out)(\.|$)"),
)


@dataclass
class RoleShare:
    params: int
    flops: int
    param_share: float = 0.0
    flop_share: float = 0.0

    def to_json(self) -> dict:
        return {"params": self.params, "flops": self.flops, "param_share": round(self.param_share, 6),
                "flop_share": round(self.flop_share, 6)}


def role_of(name: str) -> str:
    """The role of a parameter (``blocks.3.attn.to_q.weight``) or module path (``blocks.3.attn.to_q``)."""
    for role, pattern in _RULES:
        if re.search(pattern, name):
            return role
    return "other"


def _module_path(param_name: str) -> str:
    return param_name.rpartition(".")[0] if not param_name.endswith("scale_shift_table") else param_name


def parameter_roles(model: nn.Module) -> dict[str, int]:
    """Parameters by role (each shared tensor once); needs no forward call, so it works for any model."""
    params = {role: 0 for role in ROLES}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            params[role_of(_module_path(name))] += p.numel()
    return params


def parameter_groups(model: nn.Module, inputs: dict) -> dict[str, RoleShare]:
    """Parameters and FLOPs of one call ``model(**inputs)`` by role (counted on ``meta``). FLOPs of a leaf module
    (a Linear, a convolution) go to its role; attention matmuls go to ``attention``."""
    params = parameter_roles(model)
    state = meta_state(model)
    with torch.no_grad(), flop_counter() as counter:
        torch.func.functional_call(model, state, (), to_meta(inputs), tie_weights=True, strict=False)
    counts = counter.get_flop_counts()
    total = int(counter.get_total_flops())
    flops = {role: 0 for role in ROLES}
    prefix = type(model).__name__ + "."
    for name, module in model.named_modules():
        if not name or next(module.children(), None) is not None:
            continue  # leaves only: a container's count includes its children's
        ops = counts.get(prefix + name, {})
        flops[role_of(name)] += sum(int(n) for op, n in ops.items() if not any(k in str(op) for k in ATTENTION_OPS))
    flops["attention"] += sum(int(n) for op, n in counts.get("Global", {}).items()
                              if any(k in str(op) for k in ATTENTION_OPS))
    flops["other"] += max(0, total - sum(flops.values()))
    n_params = sum(params.values()) or 1
    return {role: RoleShare(params[role], flops[role], params[role] / n_params, flops[role] / (total or 1))
            for role in ROLES}
