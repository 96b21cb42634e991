"""The distillation loss terms, each returned separately so they can be logged and plotted.

- task: the denoising loss against the model's own target (epsilon, or v for v-prediction models);
- output KD: ||eps_S - eps_T||^2 (mean over elements);
- feature KD, plain (BK-SDM): one MSE per matched feature, summed;
- feature KD, normalized (LAPTOP): per matched feature and sample, ||F_S - F_T||^2 / ||F_T||^p (p = 2: a relative
  error, independent of the layer's activation scale; p = 1 as the option the paper's text leaves open), averaged
  over the batch and summed over features;
- feature KD, token-normalized (PPCL's alignment loss): the same relative error per token (a DiT block's
  ``(B, N, D)`` output, or each position of a ``(B, C, H, W)`` map across its channels), averaged over tokens and
  the batch, summed over features: every token counts alike, however large its activations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-6


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a.float(), b.float())


def plain_feature_terms(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One MSE per matched feature pair (the teacher's side carries no gradient)."""
    return [mse(s, t.detach()) for s, t in zip(student, teacher)]


def normalized_feature_terms(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                             power: int = 2) -> list[torch.Tensor]:
    """Per matched pair: the batch mean of ||F_S - F_T||^2 / ||F_T||^power, norms taken per sample."""
    terms = []
    for s, t in zip(student, teacher):
        s, t = s.float().flatten(1), t.detach().float().flatten(1)
        num = (s - t).pow(2).sum(1)
        den = t.pow(2).sum(1) if power == 2 else t.pow(2).sum(1).sqrt()
        terms.append((num / (den + EPS)).mean())
    return terms


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, tokens, width): a DiT's (B, N, D) as it is, a feature map's (B, C, H, W) as (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2) if x.ndim == 4 else x.reshape(x.shape[0], -1, x.shape[-1])


def token_normalized_feature_terms(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
                                   ) -> list[torch.Tensor]:
    """Per matched pair: the mean over tokens and samples of ||f_S - f_T||^2 / ||f_T||^2, norms per token."""
    terms = []
    for s, t in zip(student, teacher):
        s, t = _tokens(s.float()), _tokens(t.detach().float())
        terms.append(((s - t).pow(2).sum(-1) / (t.pow(2).sum(-1) + EPS)).mean())
    return terms


def total_loss(task: torch.Tensor, output_kd: torch.Tensor, feature_terms: Sequence[torch.Tensor], *,
               lambda_task: float, lambda_out: float, lambda_feat: float) -> torch.Tensor:
    loss = lambda_task * task + lambda_out * output_kd
    if feature_terms:
        loss = loss + lambda_feat * torch.stack(list(feature_terms)).sum()
    return loss
