"""Short pilots of the shapes testbed's diffusion stage: does a training lever help position?

Run: python benchmarks/testbed_pilot.py --steps 500 [--head-dim 32] [--channels 64,64,64] [--batch 32] ...

Each pilot trains a fresh text encoder + U-Net for ``--steps`` steps on latents of the committed testbed's
VAE (the evaluator and VAE stages are skipped: they do not change between pilots), with the training
configuration of ``python -m diffprune.testbed.train`` except the options given, then runs the ``shapes``
suite on the *training-split* prompts (the held-out prompts stay untouched while tuning) and prints one table
row: the layout probe (where the clean-image prediction from pure noise puts the object), one-object cell
accuracy, two-object relation accuracy, colour, shape, count, accuracy_all, the U-Net's
parameters and seconds per training step. ``--json FILE`` appends the row to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch


def _shapes_metrics(pipe) -> dict:
    from diffprune.evaluate.shapes import ShapesSuiteConfig, run_shapes_suite

    result = run_shapes_suite(pipe, ShapesSuiteConfig(split="train", progress=False))
    ones = [r for r, p in zip(result.per_prompt, result.prompts) if len(p.scene.objects) == 1]
    twos = [r for r, p in zip(result.per_prompt, result.prompts) if len(p.scene.objects) == 2]
    m = result.metrics
    return {"cell": sum(r["position"] for r in ones) / len(ones),
            "relation": sum(r["position"] for r in twos) / len(twos),
            "color": m["accuracy_color"], "shape": m["accuracy_shape"], "size": m["accuracy_size"],
            "count": m["accuracy_count"], "all": m["accuracy_all"], "fd": round(m["fd"], 1)}


@torch.no_grad()
def layout_probe(pipe, t: int = 999) -> dict:
    """Where the model puts the object before any drawing: for every one-object training-split scene, the
    centroid of the decoded clean-image prediction at timestep ``t`` from pure noise (one U-Net call, no
    sampling), read as a grid cell, a row and a column. Chance: 1/9, 1/3, 1/3."""
    from diffprune.testbed.pixels import cell_of
    from diffprune.testbed.world import single_object_scenes, split_of

    scenes = [s for s in single_object_scenes() if split_of(s) == "train"]
    ids = pipe.tokenizer([s.caption for s in scenes], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids)[0]
    noise = torch.randn(len(scenes), 4, 16, 16, generator=torch.Generator().manual_seed(0))
    alpha = pipe.scheduler.alphas_cumprod[t]
    v = pipe.unet(noise, torch.full((len(scenes),), t), hidden).sample
    x0 = alpha.sqrt() * noise - (1 - alpha).sqrt() * v
    images = (pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    weight = (images - images.flatten(2).median(2).values[:, :, None, None]).abs().amax(1).pow(2)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    cx = (weight * xs).sum((1, 2)) / weight.sum((1, 2))
    cy = (weight * ys).sum((1, 2)) / weight.sum((1, 2))
    n = len(scenes)
    return {"probe_cell": round(sum(cell_of(float(x), float(y)) == s.objects[0].position
                                    for x, y, s in zip(cx, cy, scenes)) / n, 3),
            "probe_row": round(sum(cell_of(32, float(y)) // 3 == s.objects[0].row for y, s in zip(cy, scenes)) / n, 3),
            "probe_col": round(sum(cell_of(float(x), 32) % 3 == s.objects[0].col for x, s in zip(cx, scenes)) / n, 3)}


@torch.no_grad()
def relation_probe(pipe, n: int = 256, t: int = 999) -> dict:
    """The layout probe for two-object scenes: for ``n`` training-split two-object scenes with two different
    colours, the clean-image prediction at timestep ``t`` from pure noise is decoded, each object is located by
    the centroid of the pixels near its colour, and the caption's relation is checked on the two centroids
    (chance 0.5: each relation is one inequality)."""
    import random

    from diffprune.testbed.world import COLORS, sample_scene

    rng = random.Random(12)
    scenes = []
    while len(scenes) < n:
        s = sample_scene(rng, "train", two_object_prob=1.0)
        if s.objects[0].color != s.objects[1].color:
            scenes.append(s)
    ids = pipe.tokenizer([s.caption for s in scenes], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids)[0]
    noise = torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    alpha = pipe.scheduler.alphas_cumprod[t]
    v = pipe.unet(noise, torch.full((n,), t), hidden).sample
    x0 = alpha.sqrt() * noise - (1 - alpha).sqrt() * v
    images = (pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    hits = 0
    for image, scene in zip(images, scenes):
        centres = []
        for obj in scene.objects:
            colour = torch.tensor(COLORS[obj.color], dtype=torch.float32)[:, None, None] / 255
            w = torch.exp(-(image - colour).pow(2).sum(0) / 0.02)
            centres.append(((w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()))
        (xa, ya), (xb, yb) = centres
        hits += bool({"to the left of": xa < xb, "to the right of": xa > xb, "above": ya < yb,
                      "below": ya > yb}[scene.relation])
    return {"probe_relation": round(hits / n, 3)}


def main(argv: list[str] | None = None) -> None:
    from diffusers import StableDiffusionPipeline

    import diffprune
    from diffprune.testbed.checkpoint import Checkpointer
    from diffprune.testbed.data import render_images, sample_scenes
    from diffprune.testbed.models import TestbedArch, build_models, sampling_scheduler
    from diffprune.testbed.loop import encode_latents
    from diffprune.testbed.train import TrainConfig, train_diffusion

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--head-dim", type=int, help="width of each attention head")
    parser.add_argument("--heads", type=int, help="a fixed number of heads per level instead")
    parser.add_argument("--channels", help="U-Net widths, e.g. 64,64,64")
    parser.add_argument("--text-width", type=int)
    parser.add_argument("--two-object-prob", type=float)
    parser.add_argument("--high-noise-share", type=float)
    parser.add_argument("--curriculum-steps", type=int)
    parser.add_argument("--curriculum-from", type=int)
    parser.add_argument("--images", type=int, default=20_000, help="training renders (default 20000)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    parser.add_argument("--json", help="append the result row to this JSON-lines file")
    parser.add_argument("--no-suite", action="store_true", help="only the layout probe (seconds), no shapes suite")
    parser.add_argument("--save", help="also save the trained pipeline to this folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    base = TrainConfig()
    arch = TestbedArch(**{**base.arch.to_dict(),
                          **({"unet_head_dim": args.head_dim} if args.head_dim else {}),
                          "unet_heads": args.heads,
                          **({"unet_channels": tuple(int(c) for c in args.channels.split(","))}
                             if args.channels else {}),
                          **({"text_width": args.text_width} if args.text_width else {})})
    cfg = TrainConfig(seed=args.seed, arch=arch, images=args.images, unet_steps=args.steps,
                      warmup_steps=min(200, args.steps // 10))
    for name, value in (("unet_batch", args.batch), ("unet_lr", args.lr), ("two_object_prob", args.two_object_prob),
                        ("high_noise_share", args.high_noise_share), ("curriculum_steps", args.curriculum_steps),
                        ("curriculum_from", args.curriculum_from)):
        if value is not None:
            setattr(cfg, name, value)

    shipped = diffprune.load("shapes")
    vae = shipped.vae.float().eval()
    items = sample_scenes(cfg.images, cfg.seed + 6, "train", cfg.two_object_prob)
    means, stds = encode_latents(vae, render_images(items))
    tokenizer, text_encoder, unet, _ = build_models(cfg.arch, seed=cfg.seed + 7)
    torch.manual_seed(cfg.seed + 9)
    log: dict = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(tmp, every_s=math.inf)
        ckpt.begin("diffusion")
        noise_sched = train_diffusion(tokenizer, text_encoder, unet, [s.caption for s, _ in items], means, stds,
                                      vae.config.scaling_factor, cfg, log, ckpt, torch.device("cpu"))
    seconds = time.perf_counter() - start
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=sampling_scheduler(noise_sched.config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if args.save:
        pipe.save_pretrained(args.save)
    row = {"tag": args.tag, "steps": cfg.unet_steps, "batch": cfg.unet_batch, "lr": cfg.unet_lr,
           "arch": f"{','.join(map(str, arch.unet_channels))}/"
                   f"{f'{arch.unet_heads}heads' if arch.unet_heads else f'w{arch.unet_head_dim}'}/t{arch.text_width}",
           "two_obj": cfg.two_object_prob, "curriculum": f"{cfg.curriculum_steps}@{cfg.curriculum_from}",
           "unet_params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
           "s_per_step": round(seconds / cfg.unet_steps, 3), "loss_last200": round(log["diffusion_loss_last200"], 4),
           **layout_probe(pipe), **relation_probe(pipe), **({} if args.no_suite else _shapes_metrics(pipe))}
    print(" | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
