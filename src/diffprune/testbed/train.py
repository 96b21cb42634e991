"""Train the shapes testbed from scratch: evaluator, VAE, then text encoder and U-Net jointly.

One command reproduces the committed weights (same seed, same machine kind, same CPU thread count: they were
trained at 2)::

    OMP_NUM_THREADS=2 python -m diffprune.testbed.train --out runs/testbed

writes ``evaluator.safetensors``, ``pipeline/`` (a ``StableDiffusionPipeline`` folder, fp16 weights) and
``training.json`` (configuration, losses, seconds per stage, the CPU thread count the run started with and, if
it was resumed with another, ``resumed_with_threads``). ``--quick`` runs a few steps of each stage to
check the mechanics in under a minute. The run saves ``checkpoint.pt`` in the output folder every few minutes
(``--checkpoint-minutes``); ``--resume`` continues from it, bit-identical to an uninterrupted run on the same
machine kind with the same CPU thread count. ``--device cuda`` trains on a GPU (random draws stay on the CPU, so the data is the same).
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import Batches, Checkpointer, capture
from .data import augment, extra_object_items, render_images, sample_layouts, sample_scenes, to_float
from .evaluator import ShapesEvaluator, evaluator_loss, load_evaluator, scene_targets
from .scoring import score_scene
from .loop import (TimestepDraws, after_diffusion_step, draw_batch, encode_latents, log_diffusion_losses,
                   lr_lambda, noise_schedule, param_groups, training_step)
from .models import TestbedArch, build_models, sampling_scheduler


@dataclass
class TrainConfig(TimestepDraws):
    seed: int = 0
    arch: TestbedArch = field(default_factory=lambda: TestbedArch(unet_channels=(32, 64, 64), unet_head_dim=16))
    two_object_prob: float = 0.4
    # evaluator: reads any colour-shape combination, held-out ones included
    evaluator_images: int = 60_000
    evaluator_steps: int = 3_000
    evaluator_batch: int = 96
    evaluator_lr: float = 2e-3
    # VAE and diffusion: training split only
    images: int = 30_000
    vae_steps: int = 1_000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 9_000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    ema_power: float = 2 / 3
    # Min-SNR-gamma loss weighting (None: plain MSE); it shifts weight to the noisy steps where layout is decided
    snr_gamma: float | None = None
    # exclude embeddings, norms and biases from weight decay (False: decay everything)
    decay_matrices_only: bool = True
    # zero terminal SNR + v-prediction: the last timestep is pure noise, so no layout leaks from the noise, and
    # the loss still weighs the layout at high noise (an epsilon loss weighs it by SNR, close to zero there)
    zero_terminal_snr: bool = True

    @classmethod
    def quick(cls) -> "TrainConfig":
        return cls(evaluator_images=512, evaluator_steps=10, evaluator_batch=32, images=256, vae_steps=10,
                   unet_steps=10, warmup_steps=2, curriculum_steps=3)


def train_evaluator(cfg: TrainConfig, log: dict, ckpt: Checkpointer, device: torch.device) -> ShapesEvaluator:
    # 1-3 objects of any combination and size, so that extra objects (next to large ones too) are seen
    items = sample_layouts(cfg.evaluator_images, cfg.seed + 1)
    images = render_images(items)
    targets = scene_targets([objects for objects, _ in items])
    torch.manual_seed(cfg.seed + 2)
    model = ShapesEvaluator().to(device)
    opt = torch.optim.AdamW(model.parameters(), cfg.evaluator_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(100, cfg.evaluator_steps))
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    batches = Batches(len(items), cfg.evaluator_batch, gen)
    objects = {"model": model, "opt": opt, "sched": sched, "gen": gen, "batches": batches}
    start, losses = ckpt.resume("evaluator", objects)
    for step in tqdm(range(start, cfg.evaluator_steps), desc="evaluator", mininterval=5):
        idx = next(batches)
        x = augment(to_float(images[idx]), gen).to(device)
        loss = evaluator_loss(model(x), {k: v[idx].to(device) for k, v in targets.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        ckpt.after_step("evaluator", step + 1, lambda: capture(step + 1, losses, objects), log)
    log["evaluator_loss_last100"] = sum(losses[-100:]) / len(losses[-100:])
    return model.cpu().eval()


def train_vae(vae, images: torch.Tensor, cfg: TrainConfig, log: dict, ckpt: Checkpointer, device: torch.device):
    vae.to(device)
    opt = torch.optim.AdamW(vae.parameters(), cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(100, cfg.vae_steps))
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    batches = Batches(len(images), cfg.vae_batch, gen)
    objects = {"vae": vae, "opt": opt, "sched": sched, "gen": gen, "batches": batches}
    start, losses = ckpt.resume("vae", objects)
    vae.train()
    for step in tqdm(range(start, cfg.vae_steps), desc="vae", mininterval=5):
        x = (to_float(images[next(batches)]) * 2 - 1).to(device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(device)
        recon = vae.decode(z).sample
        loss = (recon - x).pow(2).mean() + 0.1 * (recon - x).abs().mean()
        loss = loss + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        ckpt.after_step("vae", step + 1, lambda: capture(step + 1, losses, objects), log)
    log["vae_loss_last100"] = sum(losses[-100:]) / len(losses[-100:])
    return vae.cpu().eval()


def train_diffusion(tokenizer, text_encoder, unet, captions: list[str], means, stds, scaling: float,
                    cfg: TrainConfig, log: dict, ckpt: Checkpointer, device: torch.device):
    from diffusers.training_utils import EMAModel

    zero_snr = cfg.zero_terminal_snr
    noise_sched = noise_schedule(zero_snr)
    tok = lambda texts: tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,  # noqa: E731
                                  truncation=True, return_tensors="pt").input_ids
    ids, empty = tok(captions), tok([""])[0]
    unet.to(device)
    text_encoder.to(device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = EMAModel(params, use_ema_warmup=True, power=cfg.ema_power)
    opt = torch.optim.AdamW(param_groups(unet, text_encoder, cfg.decay_matrices_only), cfg.unet_lr)
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.unet_steps))
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    batches = Batches(len(captions), cfg.unet_batch, gen)
    objects = {"unet": unet, "text_encoder": text_encoder, "opt": opt, "sched": sched, "ema": ema, "gen": gen,
               "batches": batches}
    start, losses = ckpt.resume("diffusion", objects)
    unet.train()
    text_encoder.train()
    snr = snr.to(device)
    bar = tqdm(range(start, cfg.unet_steps), desc="text encoder + unet", mininterval=5)
    for step in bar:
        idx = next(batches)
        z, noise, t = draw_batch(idx, means, stds, scaling, gen, step, cfg, device)
        batch_ids = ids[idx].clone()
        dropped = torch.rand(len(idx), generator=gen) < cfg.caption_dropout  # for classifier-free guidance
        batch_ids[dropped] = empty
        hidden = text_encoder(batch_ids.to(device))[0]
        pred = unet(noise_sched.add_noise(z, noise, t), t, hidden).sample
        target = noise_sched.get_velocity(z, noise, t) if zero_snr else noise
        if cfg.snr_gamma is None:
            loss = (pred - target).pow(2).mean()
        else:  # Min-SNR-gamma: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v
            weight = snr[t].clamp(max=cfg.snr_gamma) / (snr[t] + 1 if zero_snr else snr[t])
            loss = ((pred - target).pow(2).flatten(1).mean(1) * weight).mean()
        training_step(loss, params, opt, sched, ema, losses)
        after_diffusion_step(bar, step, losses, objects, ckpt, log)
    ema.copy_to(params)
    unet.cpu()
    text_encoder.cpu()
    log_diffusion_losses(losses, log)
    return noise_sched


@torch.no_grad()
def _read_accuracy(evaluator: ShapesEvaluator, items, images: torch.Tensor) -> float:
    """Share of scenes whose every attribute the evaluator reads right."""
    readings = evaluator.read(images)
    return sum(score_scene(scene, found)["all"] for (scene, _), found in zip(items, readings)) / len(items)


@torch.no_grad()
def flags_extra_objects(evaluator: ShapesEvaluator, seed: int, n: int = 512) -> float:
    """Share of renders of a large object with an extra small one next to it that the evaluator scores as not
    matching the one-object caption (:func:`~diffprune.testbed.data.extra_object_items`)."""
    items = extra_object_items(n, seed)
    readings = evaluator.read(to_float(render_images([(drawn, s) for _, drawn, s in items])))
    return sum(score_scene(scene, found)["all"] == 0.0 for (scene, _, _), found in zip(items, readings)) / n


def start_run(out_dir, cfg, *, resume: bool, checkpoint_minutes: float, device: str,
              stop_after: tuple[str, int] | None):
    """``(device, out folder, checkpointer, log)`` of a training run: the log is the checkpoint's when resuming,
    which must have been made with the same configuration."""
    dev = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(out, every_s=checkpoint_minutes * 60, resume=resume, stop_after=stop_after)
    log: dict = ckpt.log or {"config": asdict(cfg), "torch": str(torch.__version__),
                             "threads": torch.get_num_threads(), "device": device_name(dev), "seconds": {}}
    if log["config"] != asdict(cfg):
        raise ValueError(f"{ckpt.path} was made with another configuration; resume with the same options")
    threads = torch.get_num_threads()
    if resume and ckpt.log is not None and dev.type == "cpu" and threads != log["threads"]:
        # the thread count changes the order of floating-point sums: still a valid run, but another one
        warnings.warn(f"{ckpt.path} was started with {log['threads']} CPU threads and resumes with {threads}: "
                      "the result will not be bit-identical to an uninterrupted run (set OMP_NUM_THREADS="
                      f"{log['threads']} to keep it so)", stacklevel=3)
        log.setdefault("resumed_with_threads", []).append(threads)
    return dev, out, ckpt, log


def train(out_dir: str | Path, cfg: TrainConfig | None = None, *, resume: bool = False,
          checkpoint_minutes: float = 5.0, device: str = "cpu", stop_after: tuple[str, int] | None = None) -> Path:
    """Run every stage and write the testbed to ``out_dir`` (see the module docstring).

    ``resume`` continues from ``out_dir/checkpoint.pt``; ``stop_after=(stage, step)`` stops after saving a
    checkpoint there (raises :class:`~diffprune.testbed.checkpoint.TrainingInterrupted`; for tests)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    cfg = cfg or TrainConfig()
    dev, out, ckpt, log = start_run(out_dir, cfg, resume=resume, checkpoint_minutes=checkpoint_minutes,
                                    device=device, stop_after=stop_after)

    ckpt.begin("evaluator")
    if ckpt.done("evaluator") is None or not (out / "evaluator.safetensors").exists():
        evaluator = train_evaluator(cfg, log, ckpt, dev)
        save_file({k: v.half().contiguous() for k, v in evaluator.state_dict().items()},
                  str(out / "evaluator.safetensors"))
        ckpt.finish("evaluator", {}, log)
    log["seconds"]["evaluator"] = round(ckpt.seconds("evaluator"), 1)
    evaluator = load_evaluator(out / "evaluator.safetensors")  # judge what is shipped: the fp16 weights
    check_items = sample_scenes(512, cfg.seed + 10, "heldout")
    check_images = to_float(render_images(check_items))
    log["evaluator_accuracy_heldout_renders"] = _read_accuracy(evaluator, check_items, check_images)
    log["evaluator_flags_extra_object_next_to_large"] = flags_extra_objects(evaluator, cfg.seed + 11)

    ckpt.begin("vae")
    items = sample_scenes(cfg.images, cfg.seed + 6, "train", cfg.two_object_prob)
    images = render_images(items)
    captions = [scene.caption for scene, _ in items]
    tokenizer, text_encoder, unet, vae = build_models(cfg.arch, seed=cfg.seed + 7)
    torch.manual_seed(cfg.seed + 8)
    if ckpt.done("vae") is None:
        vae = train_vae(vae, images, cfg, log, ckpt, dev)
        ckpt.finish("vae", {"vae": vae.state_dict()}, log)
    else:
        vae.load_state_dict(ckpt.done("vae")["vae"])
        vae.eval()
    means, stds = encode_latents(vae, images)
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    log["vae_scaling_factor"] = scaling
    with torch.no_grad():
        recon = (vae.decode(vae.encode(check_images * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    log["vae_psnr_heldout"] = round(float(-10 * torch.log10((recon - check_images).pow(2).mean())), 2)
    log["evaluator_accuracy_heldout_vae_reconstructions"] = _read_accuracy(evaluator, check_items, recon)
    log["seconds"]["vae"] = round(ckpt.seconds("vae"), 1)
    print(json.dumps({k: v for k, v in log.items() if k not in ("config",)}), flush=True)

    ckpt.begin("diffusion")
    torch.manual_seed(cfg.seed + 9)
    noise_sched = train_diffusion(tokenizer, text_encoder, unet, captions, means, stds, scaling, cfg, log, ckpt,
                                  dev)
    log["seconds"]["diffusion"] = round(ckpt.seconds("diffusion"), 1)

    scheduler = sampling_scheduler(noise_sched.config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(out / "pipeline")
    log["seconds"]["total"] = round(sum(log["seconds"].values()), 1)
    (out / "training.json").write_text(json.dumps(log, indent=2) + "\n")
    ckpt.remove()
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def add_run_options(parser: argparse.ArgumentParser, what: str) -> None:
    """The options every testbed training command has: output, seed, quick check, resuming, device."""
    parser.add_argument("--out", required=True, help=f"folder to write {what} to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps per stage, to check the mechanics")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0, help="minutes between checkpoints (5)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffprune.testbed.train", description=__doc__.split("\n\n")[0])
    add_run_options(parser, "the trained testbed")
    parser.add_argument("--unet-lr", type=float, help="learning rate of text encoder + U-Net (default 1e-3)")
    parser.add_argument("--unet-steps", type=int, help="text encoder + U-Net steps (default 9000)")
    parser.add_argument("--snr-gamma", type=float, help="Min-SNR-gamma loss weighting (default: off)")
    parser.add_argument("--decay-matrices-only", action=argparse.BooleanOptionalAction, default=None,
                        help="no weight decay on embeddings, norms and biases (default: on)")
    parser.add_argument("--zero-terminal-snr", action=argparse.BooleanOptionalAction, default=None,
                        help="zero-terminal-SNR noise schedule with v-prediction; off: epsilon on SD's schedule "
                             "(default: on)")
    parser.add_argument("--curriculum-steps", type=int,
                        help="first steps trained on timesteps >= 900 only, where the caption decides the layout "
                             "(default 800; 0: none)")
    parser.add_argument("--high-noise-share", type=float,
                        help="share of timesteps drawn from the high-noise range (default 0.5; 0: uniform)")
    args = parser.parse_args(argv)
    if args.high_noise_share is not None and not 0 <= args.high_noise_share <= 1:
        parser.error("--high-noise-share must be in [0, 1]")
    cfg = TrainConfig.quick() if args.quick else TrainConfig()
    cfg.seed = args.seed
    for name in ("unet_lr", "unet_steps", "snr_gamma", "decay_matrices_only", "zero_terminal_snr",
                 "high_noise_share", "curriculum_steps"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    out = train(args.out, cfg, resume=args.resume, checkpoint_minutes=args.checkpoint_minutes, device=args.device)
    print(json.dumps(json.loads((out / "training.json").read_text())["seconds"]))


if __name__ == "__main__":
    main()
