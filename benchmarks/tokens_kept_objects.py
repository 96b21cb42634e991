"""Which tokens token pruning keeps on the shapes testbed: the share of object tokens kept, against the share of
all tokens kept, at the 16x16 attention level in the last denoising steps.

    python benchmarks/tokens_kept_objects.py [--tokens atedm:ratio=0.63 random:ratio=0.63] [--prompts 40]

The object mask of each generated image is where it differs from the background colour (downsampled to the
16x16 token grid). A ranking that keeps objects scores above the overall kept share; one that keeps the
(much larger) background scores below it.
"""

from __future__ import annotations

import argparse

import torch

import diffprune
from diffprune import tokens
from diffprune.evaluate.prompts import shapes_prompts


def _object_mask(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid*grid) bool: token cells whose pixels differ from the image's border colour."""
    border = torch.cat([images[:, :, 0, :], images[:, :, -1, :]], dim=-1).median(dim=-1).values  # (B, 3)
    differs = (images - border[:, :, None, None]).abs().amax(1) > 0.25  # (B, H, W)
    cells = torch.nn.functional.adaptive_avg_pool2d(differs.float()[:, None], grid)[:, 0]
    return (cells > 0.5).flatten(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", nargs="+", default=["atedm:ratio=0.63", "random:ratio=0.63"])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--last", type=int, default=5, help="average over the last N steps")
    args = parser.parse_args(argv)
    pipe = diffprune.load("shapes")
    pipe.set_progress_bar_config(disable=True)
    prompts = [p for p in shapes_prompts(None) if len(p.scene.objects) == 1][: args.prompts]
    site_name = "down_blocks.0.attentions.0"
    records: list[torch.Tensor] = []

    def observe(event: tokens.KeptTokens) -> None:
        if event.site == site_name:
            mask = torch.zeros(event.kept.shape[0], event.tokens, dtype=torch.bool)
            mask.scatter_(1, event.kept, True)
            records.append(mask)

    print(f"{len(prompts)} one-object held-out prompts, {args.steps} steps; site {site_name} (16x16 tokens); "
          f"last {args.last} steps, conditional half of the CFG batch")
    print(f"{'tokens':<28}{'kept, all tokens':>18}{'kept, object tokens':>22}{'object tokens':>15}")
    for spec in args.tokens:
        config = tokens.parse_spec(spec)
        if config.method == "tome":
            print(f"{spec:<28}  (ToMe merges rather than keeps: not measured here)")
            continue
        tokens.apply(pipe, config)
        kept_all = kept_obj = n_obj = 0.0
        with tokens.observe_kept(pipe, observe):
            for prompt in prompts:
                records.clear()
                image = pipe(prompt.caption, num_inference_steps=args.steps, guidance_scale=5.0, output_type="pt",
                             generator=torch.Generator().manual_seed(prompt.seed)).images
                obj = _object_mask(image, 16)[0]
                for mask in records[-args.last:]:
                    cond = mask[-1]  # the pipeline puts the unconditional half first
                    kept_all += float(cond.float().mean())
                    kept_obj += float(cond[obj].float().sum())
                    n_obj += float(obj.sum())
        tokens.remove(pipe)
        steps = len(prompts) * args.last
        print(f"{spec:<28}{kept_all / steps:>18.3f}{kept_obj / max(n_obj, 1):>22.3f}"
              f"{n_obj / steps / 256:>15.3f}", flush=True)


if __name__ == "__main__":
    main()
