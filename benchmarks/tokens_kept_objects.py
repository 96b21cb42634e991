"""Which tokens token pruning keeps on a shapes testbed: the share of object tokens kept, against the share of
all tokens kept, at one ranking site in the last denoising steps.

    python benchmarks/tokens_kept_objects.py [--source shapes|shapes-dit] [--tokens atedm:ratio=0.63 ...]
                                             [--prompts 40] [--last 5]

Sites: on ``shapes`` (U-Net) the 16x16 attention block ``down_blocks.0.attentions.0``; on ``shapes-dit`` the
ranking block of the first segment (8x8 image tokens). The object mask of each generated image is where it
differs from the background colour, downsampled to the site's token grid. A ranking that keeps objects scores
above the overall kept share; one that keeps the (much larger) background scores below it.
"""

from __future__ import annotations

import argparse

import torch

import diffprune
from diffprune import tokens
from diffprune.evaluate import generate, shapes_prompts

UNET_SITE = "down_blocks.0.attentions.0"


def _object_mask(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, rows*cols) bool: token cells of which a quarter or more of the pixels differ from the border colour."""
    border = torch.cat([images[:, :, 0, :], images[:, :, -1, :]], dim=-1).median(dim=-1).values  # (B, 3)
    differs = (images - border[:, :, None, None]).abs().amax(1) > 0.25  # (B, H, W)
    cells = torch.nn.functional.adaptive_avg_pool2d(differs.float()[:, None], grid)[:, 0]
    return (cells >= 0.25).flatten(1)  # a quarter of the cell or more


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="shapes", choices=["shapes", "shapes-dit"])
    parser.add_argument("--tokens", nargs="+", default=None,
                        help="specs (default: atedm and random at 0.63 on shapes, 0.5 on shapes-dit)")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--last", type=int, default=5, help="average over the last N steps")
    args = parser.parse_args(argv)
    ratio = 0.63 if args.source == "shapes" else 0.5
    specs = args.tokens or [f"atedm:ratio={ratio}", f"random:ratio={ratio}"]
    pipe = diffprune.load(args.source)
    pipe.set_progress_bar_config(disable=True)
    prompts = [p for p in shapes_prompts(None) if len(p.scene.objects) == 1][: args.prompts]
    records: list[tokens.KeptTokens] = []
    site = {"name": UNET_SITE if args.source == "shapes" else None}

    def observe(event: tokens.KeptTokens) -> None:
        if site["name"] is None:  # a transformer: the first ranking site it reports
            site["name"] = event.site
        if event.site == site["name"]:
            records.append(event)

    print(f"{args.source}: {len(prompts)} one-object held-out prompts, {args.steps} steps; last {args.last} steps, "
          f"conditional half of the CFG batch")
    print(f"{'tokens':<34}{'site':<24}{'kept, all tokens':>18}{'kept, object tokens':>22}{'object tokens':>15}")
    for spec in specs:
        config = tokens.parse_spec(spec)
        if config.method == "tome":
            print(f"{spec:<28}  (ToMe merges rather than keeps: not measured here)")
            continue
        if args.source != "shapes":
            site["name"] = None  # each spec's own first ranking block
        tokens.apply(pipe, config)
        kept_all = kept_obj = n_obj = cells = 0.0
        with tokens.observe_kept(pipe, observe):
            for prompt in prompts:
                records.clear()
                image = generate(pipe, [prompt], steps=args.steps, progress=False)  # [0, 1]
                for event in records[-args.last:]:
                    mask = torch.zeros(event.kept.shape[0], event.tokens, dtype=torch.bool)
                    mask.scatter_(1, event.kept, True)
                    cond = mask[-1]  # the pipelines put the unconditional half first
                    obj = _object_mask(image, event.grid)[0]
                    kept_all += float(cond.float().mean())
                    kept_obj += float(cond[obj].float().sum())
                    n_obj += float(obj.sum())
                    cells += event.tokens
        tokens.remove(pipe)
        steps = len(prompts) * args.last
        print(f"{spec:<34}{site['name']:<24}{kept_all / steps:>18.3f}{kept_obj / max(n_obj, 1):>22.3f}"
              f"{n_obj / max(cells, 1):>15.3f}", flush=True)


if __name__ == "__main__":
    main()
