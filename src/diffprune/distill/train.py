"""``distill(student, teacher, data, config)``: retrain a pruned pipeline's denoiser (U-Net or diffusion
transformer) against the original's.

The student (a layer- and/or weight-pruned pipeline) learns the denoising task, the teacher's output and the
teacher's features (see :mod:`diffprune.distill.losses`); the teacher is frozen and runs under ``no_grad`` in
the same process. Training goes through 🤗 accelerate: launched plainly it uses one process; under
``accelerate launch`` or ``torchrun`` every process takes its share of each global batch and DDP averages the
gradients, so N processes end where one would (up to float summation order).

Determinism: sample ``k`` of step ``s`` is drawn from a generator seeded by (seed, s, k) — its data index,
latent noise, diffusion noise, timestep and caption dropout — so neither resuming nor the number of processes
changes what is trained on. Checkpoints (``accelerate``'s ``save_state``) hold the student, the optimiser, the
learning-rate schedule and the EMA; ``resume="latest"`` continues exactly where a run stopped.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from diffprune.anatomy import denoiser_name, denoiser_of, is_pipeline, model_components
from diffprune.errors import DiffpruneError
from diffprune.history import history_of, record_step
from diffprune.precision import parse_dtype
from diffprune.results import StepResult

from .config import DistillConfig
from .data import DistillData
from .denoising import Denoising, check_trainable
from .features import FeatureTaps, matched_sites
from .losses import mse, normalized_feature_terms, plain_feature_terms, token_normalized_feature_terms, total_loss


class DistillInterrupted(DiffpruneError):
    """Raised when a run was asked to stop after a given step (to test resuming)."""


@dataclass
class DistillResult(StepResult):
    family: ClassVar[str] = "distill"
    steps: int
    sites: list[str]
    log: list[dict] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    def summary(self) -> str:
        last = self.log[-1] if self.log else {}
        return (f"{self.steps} steps, features at {len(self.sites)} sites; last loss "
                f"{last.get('loss', float('nan')):.4g}")

    def to_json(self) -> dict:
        return {"steps": self.steps, "sites": self.sites, "seconds": self.seconds,
                "last": self.log[-1] if self.log else None}


def check_pipelines(student, teacher=None) -> None:
    """What distillation needs of the student (and the teacher, when given), checked before anything changes."""
    for name, pipe in (("student", student), ("teacher", teacher)):
        if pipe is None:
            continue
        if not is_pipeline(pipe):
            raise DiffpruneError(f"the {name} must be a whole pipeline (its text encoders condition the training)")
        check_trainable(pipe)
    if teacher is not None and type(denoiser_of(student)) is not type(denoiser_of(teacher)):
        raise DiffpruneError(f"the student's {type(denoiser_of(student)).__name__} and the teacher's "
                             f"{type(denoiser_of(teacher)).__name__} are different models")
    model = denoiser_of(student)
    if model.dtype != torch.float32:
        raise DiffpruneError(f"the student's {denoiser_name(student)} is in {model.dtype}; train it in float32 "
                             "(load it without a lower dtype) and use mixed_precision for speed")
    if teacher is not None and model is denoiser_of(teacher):
        raise DiffpruneError("the student and the teacher share one denoiser object; pass a copy as the student")


def check_run(student, teacher, config: DistillConfig | None = None) -> list[tuple[str, str]]:
    """Everything :func:`distill` refuses, checked without training (a command checks it before it writes
    anything): the pipelines, what this machine offers for ``config``, and the feature sites. Returns the
    ``(student, teacher)`` feature-site pairs (none when ``config`` uses no feature loss)."""
    config = config or DistillConfig()
    check_pipelines(student, teacher)
    cuda = torch.cuda.is_available()
    if config.optimizer == "adamw8bit" and not cuda:
        raise DiffpruneError("8-bit AdamW needs a CUDA GPU and bitsandbytes")
    if config.mixed_precision == "fp16" and not cuda:
        raise DiffpruneError("fp16 mixed precision needs a CUDA GPU; use bf16 on a CPU")
    if config.feature_kd == "none" or config.lambda_feat <= 0:
        return []
    return matched_sites(denoiser_of(student), denoiser_of(teacher), config.features, history_of(student))


@functools.lru_cache(maxsize=4)
def _order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch (every epoch reshuffled from the seed)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))


def _sample(data: DistillData, config: DistillConfig, step: int, k: int, shape, num_train_timesteps: int):
    """Sample ``k`` of the global batch of ``step``: (data index, latent noise, diffusion noise, timestep,
    caption dropped), all from one generator seeded by (seed, step, k)."""
    g = torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 10_007 + k)
    position = step * config.batch_size + k
    epoch, offset = divmod(position, len(data))
    index = int(_order(config.seed, epoch, len(data))[offset])
    latent_noise = torch.randn(shape, generator=g)
    noise = torch.randn(shape, generator=g)
    t = int(torch.randint(0, num_train_timesteps, (1,), generator=g))
    dropped = bool(torch.rand(1, generator=g) < config.caption_dropout)
    return index, latent_noise, noise, t, dropped


def _conditioning(den: Denoising, pipe, captions: list[str], empty: dict, dropped: torch.Tensor, device) -> dict:
    """The pipeline's text conditioning of ``captions``, the empty prompt's where a caption was dropped."""
    cond = den.encode(pipe, captions, device)
    out = {}
    for key, value in cond.items():
        where = dropped.reshape(-1, *([1] * (value.ndim - 1)))
        out[key] = torch.where(where, empty[key].expand_as(value), value)
    return out


def _weight_masks(student) -> dict[str, torch.Tensor]:
    """For a weight-pruned denoiser (its history says so): where its matrices are zero, to keep them zero."""
    name = denoiser_name(student)
    if not any(s.get("step") == "prune-weights" and s.get("component") == name for s in history_of(student)):
        return {}
    return {n: p.detach() == 0 for n, p in denoiser_of(student).named_parameters() if p.dim() >= 2 and (p == 0).any()}


def _resume_folder(work: Path, resume: str) -> Path:
    found = _checkpoints(work)
    folder = (found[-1] if found else None) if resume == "latest" else Path(resume)
    if folder is None or not (folder / "diffprune-step.json").is_file():
        raise DiffpruneError(f"no checkpoint to resume from in {work / 'checkpoints'}" if resume == "latest"
                             else f"{resume} is not a distillation checkpoint")
    return folder


def _checkpoints(work_dir: Path) -> list[Path]:
    folder = work_dir / "checkpoints"
    found = [p for p in folder.glob("checkpoint-*") if (p / "diffprune-step.json").is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def distill(student, teacher, data: DistillData, config: DistillConfig | None = None, *,
            work_dir: str | Path | None = None, resume: str | None = None, progress: bool = True,
            stop_after: int | None = None) -> DistillResult:
    """Retrain the student's denoiser in place (see the module docstring) and record the step in its history.

    ``work_dir``: where the log (``log.jsonl``) and checkpoints go (none without it). ``resume``: ``"latest"`` or a
    checkpoint folder. ``stop_after``: stop (after checkpointing) once this step is done, as an interruption would.
    """
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    config = config or DistillConfig()
    pairs = check_run(student, teacher, config)
    work = Path(work_dir) if work_dir is not None else None
    if (resume or config.checkpoint_every or stop_after) and work is None:
        raise DiffpruneError("checkpoints and resuming need a work folder")
    cuda = torch.cuda.is_available()
    resume_from = _resume_folder(work, resume) if resume else None
    try:  # CPU-only machines join the process group over gloo (accelerate only does so when asked for the CPU)
        accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not cuda)
    except ValueError as e:  # e.g. another precision than an earlier run in this process
        raise DiffpruneError(f"accelerate refused the set-up: {e}") from None
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    per_process, rest = divmod(config.batch_size, world * config.gradient_accumulation)
    if rest or per_process == 0:
        raise DiffpruneError(f"batch_size {config.batch_size} does not split into {world} processes x "
                             f"{config.gradient_accumulation} accumulation steps")
    start_time = time.perf_counter()
    unet, t_unet = denoiser_of(student), denoiser_of(teacher)
    den = Denoising.of(student)
    use_features = bool(pairs)
    sites = [s for s, _ in pairs]
    needs_teacher = config.lambda_out > 0 or use_features
    noise_sched = DDPMScheduler.from_config(teacher.scheduler.config)
    num_train_timesteps = int(teacher.scheduler.config.get("num_train_timesteps") or 1000)
    encoders = [m for pipe in (student, teacher) for n, m in model_components(pipe).items()
                if n.startswith("text_encoder")]
    # where everything is now: the caller's pipelines are put back there however the run ends
    places = [(m, m.device, m.dtype) for m in (*encoders, t_unet, unet)]
    s_taps = t_taps = None
    try:
        s_taps, t_taps = FeatureTaps(unet, sites), FeatureTaps(t_unet, [t for _, t in pairs])
        masks = {n: m.to(device) for n, m in _weight_masks(student).items()}
        for encoder in encoders:
            encoder.to(device).eval().requires_grad_(False)
        teacher_dtype = parse_dtype(config.teacher_dtype)
        if teacher_dtype is not None and teacher_dtype != t_unet.dtype:
            t_unet.to(teacher_dtype)
        t_unet.to(device).eval().requires_grad_(False)
        unet.to(device).train().requires_grad_(True)
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        params = [p for p in unet.parameters() if p.requires_grad]
        if config.optimizer == "adamw8bit":
            import bitsandbytes

            optimizer = bitsandbytes.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        lr_schedule = get_scheduler("cosine" if config.schedule == "cosine" else "constant_with_warmup", optimizer,
                                    num_warmup_steps=config.warmup_steps, num_training_steps=config.steps)
        ema = EMAModel(params, decay=config.ema_decay) if config.ema_decay else None
        model, optimizer = accelerator.prepare(unet, optimizer)  # the schedule is stepped here, once per step
        accelerator.register_for_checkpointing(lr_schedule)
        if ema is not None:
            accelerator.register_for_checkpointing(ema)
        start, log = 0, []
        if resume_from is not None:
            accelerator.load_state(str(resume_from))
            if ema is not None:
                ema.to(device)  # accelerate restores custom state on the CPU
            state = json.loads((resume_from / "diffprune-step.json").read_text())
            start, log = state["step"], state["log"]
        empty = {"student": den.encode(student, [""], device), "teacher": den.encode(teacher, [""], device)}
        shape = tuple(data.means.shape[1:])
        mine = range(rank * per_process * config.gradient_accumulation, (rank + 1) * per_process * config.gradient_accumulation)
        bar = tqdm(range(start, config.steps), desc="distill", disable=not (progress and accelerator.is_main_process))
        loop_start = time.perf_counter()
        for step in bar:
            terms_sum: dict[str, float] = {}
            for micro in range(config.gradient_accumulation):
                ks = list(mine)[micro * per_process:(micro + 1) * per_process]
                draws = [_sample(data, config, step, k, shape, num_train_timesteps) for k in ks]
                idx = torch.tensor([d[0] for d in draws])
                z = den.latents(teacher, data.means[idx] + data.stds[idx] * torch.stack([d[1] for d in draws]))
                noise = torch.stack([d[2] for d in draws])
                t = torch.tensor([d[3] for d in draws])
                dropped = torch.tensor([d[4] for d in draws], device=device)
                captions = [data.captions[i] for i in idx.tolist()]
                z, noise, t = z.to(device), noise.to(device), t.to(device)
                noisy, t_in, target = den.noise(noise_sched, z, noise, t, num_train_timesteps)
                hidden = {name: _conditioning(den, pipe, captions, empty[name], dropped, device)
                          for name, pipe in (("student", student), ("teacher", teacher))}
                t_out, t_feats = None, []
                if needs_teacher:  # task-only training is plain fine-tuning: no teacher forward
                    with torch.no_grad():
                        t_out = den.forward(t_unet, noisy, t_in, hidden["teacher"])
                        t_feats = t_taps.take() if sites else []
                sync = micro == config.gradient_accumulation - 1
                with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                    s_out = den.forward(model, noisy, t_in, hidden["student"])
                    s_feats = s_taps.take() if sites else []
                    task = mse(s_out, target)
                    out_kd = mse(s_out, t_out) if t_out is not None else torch.zeros((), device=device)
                    if config.feature_kd == "normalized":
                        feats = normalized_feature_terms(s_feats, t_feats, config.norm_power)
                    elif config.feature_kd == "token-normalized":
                        feats = token_normalized_feature_terms(s_feats, t_feats)
                    elif config.feature_kd == "plain":
                        feats = plain_feature_terms(s_feats, t_feats)
                    else:
                        feats = []
                    loss = total_loss(task, out_kd, feats, lambda_task=config.lambda_task,
                                      lambda_out=config.lambda_out, lambda_feat=config.lambda_feat)
                accelerator.backward(loss / config.gradient_accumulation)
                values = {"loss": loss, "task": task, "output_kd": out_kd,
                          **{f"feat/{s}": f for s, f in zip(sites, feats)}}
                for key, value in values.items():
                    terms_sum[key] = terms_sum.get(key, 0.0) + float(value.detach()) / config.gradient_accumulation
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if masks:
                with torch.no_grad():
                    for name, p in accelerator.unwrap_model(model).named_parameters():
                        if name in masks:
                            p.masked_fill_(masks[name], 0.0)
            if ema is not None:
                ema.step(params)
            if step % config.log_every == 0 or step == config.steps - 1:
                reduced = accelerator.reduce(torch.tensor(list(terms_sum.values()), device=device), "mean")
                entry = {"step": step + 1, "lr": lr_schedule.get_last_lr()[0],
                         "seconds": round(time.perf_counter() - loop_start, 4),  # since this process began the loop
                         **{k: round(float(v), 6) for k, v in zip(terms_sum, reduced.tolist())}}
                log.append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}", task=f"{entry['task']:.4f}",
                                out=f"{entry['output_kd']:.4f}")
            done = step + 1
            if work is not None and ((config.checkpoint_every and done % config.checkpoint_every == 0)
                                     or done == stop_after):
                _save_checkpoint(accelerator, work, done, log, config.checkpoints_total_limit)
            if done == stop_after and done < config.steps:
                raise DistillInterrupted(f"stopped after step {done}, as asked; resume with resume='latest'")
    finally:
        for taps in (s_taps, t_taps):
            if taps is not None:
                taps.remove()
        for module, where, dtype in places[:-1]:  # text encoders and the teacher, as they were
            module.to(where)
            if module.dtype != dtype:
                module.to(dtype)
    trained = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if ema is not None:
        ema.copy_to(params)
    if config.gradient_checkpointing:
        trained.disable_gradient_checkpointing()
    trained.eval().requires_grad_(False).to(places[-1][1])
    setattr(student, denoiser_name(student), trained)
    result = DistillResult(steps=config.steps, sites=sites, log=log,
                           seconds=round(time.perf_counter() - start_time, 3))
    if work is not None and accelerator.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        (work / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    record_step(student, {"step": "distill", "steps": config.steps, "feature_kd": config.feature_kd,
                          "features": config.features, "data": data.source,
                          "lambdas": [config.lambda_task, config.lambda_out, config.lambda_feat]})
    return result


def _save_checkpoint(accelerator, work: Path, step: int, log: list[dict], limit: int | None) -> None:
    folder = work / "checkpoints" / f"checkpoint-{step}"
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()  # every rank's files are written before the checkpoint is marked complete
    if accelerator.is_main_process:
        (folder / "diffprune-step.json").write_text(json.dumps({"step": step, "log": log}))
        found = _checkpoints(work)
        for old in found[:-limit] if limit else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
