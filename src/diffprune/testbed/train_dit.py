"""Train the DiT shapes testbed: a PixArt-style transformer and its text encoder, on the U-Net testbed's world,
VAE and evaluator.

One seeded command::

    python -m diffprune.testbed.train_dit --out runs/shapes-dit

reads the evaluator and the VAE of the shapes testbed (the committed one, or ``$DIFFPRUNE_TESTBED``), renders the
same training split, and trains text encoder and transformer jointly with the U-Net testbed's recipe: v-prediction
on a zero-terminal-SNR schedule, a high-noise curriculum, then half of each batch's timesteps from the high-noise
range, AdamW with warm-up and cosine decay, caption dropout, EMA. It writes ``pipeline/`` (a stock
``PixArtSigmaPipeline`` folder, fp16 weights), ``evaluator.safetensors`` (a copy, so ``DIFFPRUNE_TESTBED`` can
point at the folder) and ``training.json``. Checkpoints every few minutes; ``--resume`` continues bit-identically
on the same machine kind; ``--device cuda`` trains on a GPU; ``--quick`` checks the mechanics.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .assets import WEIGHTS_DIR, evaluator_weights, testbed_folder
from .checkpoint import Batches, Checkpointer
from .data import render_images, sample_scenes
from .dit import PIPELINE_TEXT_LENGTH, DitArch, build_dit_models, dit_forward
from .models import sampling_scheduler
from .loop import (TimestepDraws, after_diffusion_step, draw_batch, encode_latents, log_diffusion_losses,
                   lr_lambda, noise_schedule, param_groups, training_step)
from .train import add_run_options, start_run


@dataclass
class DitTrainConfig(TimestepDraws):
    seed: int = 0
    arch: DitArch = field(default_factory=DitArch)
    two_object_prob: float = 0.4
    images: int = 30_000
    steps: int = 18_000
    batch: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    ema_power: float = 2 / 3

    @classmethod
    def quick(cls) -> "DitTrainConfig":
        return cls(images=256, steps=10, warmup_steps=2, curriculum_steps=3)


def train_transformer(tokenizer, text_encoder, transformer, captions: list[str], means, stds, scaling: float,
                      cfg: DitTrainConfig, log: dict, ckpt: Checkpointer, device: torch.device):
    from diffusers.training_utils import EMAModel

    noise_sched = noise_schedule(zero_terminal_snr=True)
    encoded = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt")
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    transformer.to(device)
    text_encoder.to(device)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    ema = EMAModel(params, use_ema_warmup=True, power=cfg.ema_power)
    opt = torch.optim.AdamW(param_groups(transformer, text_encoder, True), cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    batches = Batches(len(captions), cfg.batch, gen)
    objects = {"transformer": transformer, "text_encoder": text_encoder, "opt": opt, "sched": sched, "ema": ema,
               "gen": gen, "batches": batches}
    start, losses = ckpt.resume("diffusion", objects)
    transformer.train()
    text_encoder.train()
    bar = tqdm(range(start, cfg.steps), desc="text encoder + transformer", mininterval=5)
    for step in bar:
        idx = next(batches)
        z, noise, t = draw_batch(idx, means, stds, scaling, gen, step, cfg, device)
        ids, mask = encoded.input_ids[idx].clone(), encoded.attention_mask[idx].clone()
        dropped = torch.rand(len(idx), generator=gen) < cfg.caption_dropout  # for classifier-free guidance
        ids[dropped], mask[dropped] = empty.input_ids[0], empty.attention_mask[0]
        ids, mask = ids.to(device), mask.to(device)
        hidden = text_encoder(ids, attention_mask=mask)[0]
        pred = dit_forward(transformer, noise_sched.add_noise(z, noise, t), t, hidden, mask)
        loss = (pred - noise_sched.get_velocity(z, noise, t)).pow(2).mean()
        training_step(loss, params, opt, sched, ema, losses)
        after_diffusion_step(bar, step, losses, objects, ckpt, log)
    ema.copy_to(params)
    transformer.cpu()
    text_encoder.cpu()
    log_diffusion_losses(losses, log)
    return noise_sched


def train_dit(out_dir: str | Path, cfg: DitTrainConfig | None = None, *, resume: bool = False,
              checkpoint_minutes: float = 5.0, device: str = "cpu",
              stop_after: tuple[str, int] | None = None) -> Path:
    """Train the DiT testbed into ``out_dir`` (see the module docstring)."""
    from diffusers import AutoencoderKL, PixArtSigmaPipeline

    cfg = cfg or DitTrainConfig()
    dev, out, ckpt, log = start_run(out_dir, cfg, resume=resume, checkpoint_minutes=checkpoint_minutes,
                                    device=device, stop_after=stop_after)
    base = testbed_folder()  # the U-Net testbed: its VAE (and evaluator) are shared
    vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=torch.float32).eval()
    # where the shared VAE came from: the bundled testbed, or the folder $DIFFPRUNE_TESTBED points at
    log["base_testbed"] = "bundled" if base == WEIGHTS_DIR / "pipeline" else str(base)
    ckpt.begin("latents")
    items = sample_scenes(cfg.images, cfg.seed + 6, "train", cfg.two_object_prob)
    captions = [scene.caption for scene, _ in items]
    with torch.no_grad():
        means, stds = encode_latents(vae, render_images(items))
    scaling = float(vae.config.scaling_factor)
    log["seconds"]["latents"] = round(ckpt.seconds("latents"), 1)

    ckpt.begin("diffusion")
    tokenizer, text_encoder, transformer = build_dit_models(cfg.arch, seed=cfg.seed + 7)
    torch.manual_seed(cfg.seed + 9)
    noise_sched = train_transformer(tokenizer, text_encoder, transformer, captions, means, stds, scaling, cfg, log,
                                    ckpt, dev)
    log["seconds"]["diffusion"] = round(ckpt.seconds("diffusion"), 1)
    tokenizer.model_max_length = PIPELINE_TEXT_LENGTH  # what the pipeline pads to
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae,
                               transformer=transformer.eval(), scheduler=sampling_scheduler(noise_sched.config))
    pipe.to(torch.float16).save_pretrained(out / "pipeline")
    shutil.copyfile(evaluator_weights(), out / "evaluator.safetensors")
    log["transformer_params"] = sum(p.numel() for p in transformer.parameters())
    log["seconds"]["total"] = round(sum(log["seconds"].values()), 1)
    (out / "training.json").write_text(json.dumps(log, indent=2) + "\n")
    ckpt.remove()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffprune.testbed.train_dit",
                                     description=__doc__.split("\n\n")[0])
    add_run_options(parser, "the trained DiT testbed")
    parser.add_argument("--steps", type=int, help="training steps (default 18000)")
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    parser.add_argument("--width", type=int, help="transformer width (default 128)")
    parser.add_argument("--layers", type=int, help="transformer blocks (default 8)")
    parser.add_argument("--patch-size", type=int, choices=[1, 2], help="latent patch side (default 2: 64 tokens)")
    args = parser.parse_args(argv)
    cfg = DitTrainConfig.quick() if args.quick else DitTrainConfig()
    cfg.seed = args.seed
    for name in ("steps", "lr"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    for name, key in (("width", "width"), ("layers", "layers"), ("patch_size", "patch_size")):
        if getattr(args, name) is not None:
            setattr(cfg.arch, key, getattr(args, name))
    out = train_dit(args.out, cfg, resume=args.resume, checkpoint_minutes=args.checkpoint_minutes,
                    device=args.device)
    print(json.dumps(json.loads((out / "training.json").read_text())["seconds"]))


if __name__ == "__main__":
    main()
