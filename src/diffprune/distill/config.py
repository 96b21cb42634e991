"""How a pruned U-Net is retrained by distillation: the loss terms and their weights, the optimisation, the
checkpoints. One frozen dataclass, validated when built."""

from __future__ import annotations

from dataclasses import dataclass

from diffprune.errors import DiffpruneError

FEATURE_KD = ("normalized", "plain", "token-normalized", "none")
FEATURE_SITES = ("stages", "units")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")


@dataclass(frozen=True)
class DistillConfig:
    """``loss = lambda_task * task + lambda_out * output KD + lambda_feat * feature KD``.

    - ``feature_kd``: ``normalized`` (LAPTOP: each term ||F_S - F_T||^2 / ||F_T||^2 per sample, ``norm_power``
      2; 1 divides by the unsquared norm), ``plain`` (BK-SDM: the MSE of each term), or ``none``.
    - ``features``: ``stages`` (the output of every down, mid and up stage both models have: BK-SDM's choice) or
      ``units`` (every ResNet and attention module the student kept).
    - Optimisation: AdamW (8-bit with bitsandbytes on a GPU), ``lr`` with ``warmup_steps`` then constant or
      cosine, gradient clipping, gradient accumulation, mixed precision, gradient checkpointing, EMA of the
      student. ``batch_size`` is the global batch of one optimiser step (split over processes and accumulation).
    - Every random draw (batch order, noise, timesteps, caption dropout) derives from ``seed`` and the step, so a
      resumed run and a run on several processes see the same data as one uninterrupted process.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    gradient_accumulation: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema_decay: float | None = None     # e.g. 0.999: the saved student is the EMA of its weights
    optimizer: str = "adamw"
    lambda_task: float = 1.0
    lambda_out: float = 1.0
    lambda_feat: float = 1.0
    feature_kd: str = "normalized"
    norm_power: int = 2
    features: str = "stages"
    caption_dropout: float = 0.1       # empty captions, so the student keeps classifier-free guidance
    teacher_dtype: str | None = None   # e.g. "fp16": the frozen teacher's forward in lower precision
    seed: int = 0
    checkpoint_every: int | None = None
    checkpoints_total_limit: int | None = 2
    log_every: int = 10

    def __post_init__(self) -> None:
        for name, allowed in (("feature_kd", FEATURE_KD), ("features", FEATURE_SITES), ("schedule", SCHEDULES),
                              ("mixed_precision", PRECISIONS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise DiffpruneError(f"distill: unknown {name} '{getattr(self, name)}' (choose from "
                                     f"{', '.join(allowed)})")
        if min(self.steps, self.batch_size, self.gradient_accumulation, self.log_every) < 1:
            raise DiffpruneError("distill: steps, batch_size, gradient_accumulation and log_every must be >= 1")
        if self.batch_size % self.gradient_accumulation:
            raise DiffpruneError(f"distill: batch_size {self.batch_size} is not a multiple of "
                                 f"gradient_accumulation {self.gradient_accumulation}")
        if self.lr <= 0 or self.warmup_steps < 0 or min(self.lambda_task, self.lambda_out, self.lambda_feat) < 0:
            raise DiffpruneError("distill: lr must be positive; warmup_steps and the loss weights non-negative")
        if self.lambda_task == self.lambda_out == 0 and (self.lambda_feat == 0 or self.feature_kd == "none"):
            raise DiffpruneError("distill: every loss weight is zero")
        if self.norm_power not in (1, 2):
            raise DiffpruneError(f"distill: norm_power must be 1 or 2, got {self.norm_power}")
        if not 0 <= self.caption_dropout < 1:
            raise DiffpruneError(f"distill: caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise DiffpruneError(f"distill: ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.teacher_dtype not in (None, "fp32", "fp16", "bf16"):
            raise DiffpruneError(f"distill: teacher_dtype must be fp32, fp16 or bf16, got {self.teacher_dtype}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise DiffpruneError("distill: checkpoint_every must be at least 1")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise DiffpruneError("distill: checkpoints_total_limit must be at least 1")
