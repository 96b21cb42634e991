"""The distillation loss terms, each returned separately so they can be logged and plotted.

- task: the denoising loss against the model's own target (epsilon, or v for v-prediction models);
- output KD: ||eps_S - eps_T||^2 (mean over elements);
- feature KD, plain (BK-SDM): one MSE per matched feature, summed;
- feature KD, normalized (LAPTOP): per matched feature and sample, ||F_S - F_T||^2 / ||F_T||^p (p = 2: a relative
  error, independent of the layer's activation scale; p = 1 as the option the paper's text leaves open), averaged
  over the batch and summed over features.
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


def total_loss(task: torch.Tensor, output_kd: torch.Tensor, feature_terms: Sequence[torch.Tensor], *,
               lambda_task: float, lambda_out: float, lambda_feat: float) -> torch.Tensor:
    loss = lambda_task * task + lambda_out * output_kd
    if feature_terms:
        loss = loss + lambda_feat * torch.stack(list(feature_terms)).sum()
    return loss
