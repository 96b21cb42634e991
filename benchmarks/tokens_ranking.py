"""How far G-WPR's ranking moves, and what cheaper scorers keep of it: overlap of kept token sets.

    python benchmarks/tokens_ranking.py [--source shapes] [--prompts 8] [--steps 20] [--ratio 0.63]

Runs the unpatched pipeline and, at every call of every attention block's first layer, ranks its tokens from
the layer's own queries and keys with :func:`diffprune.tokens.rank_tokens`: exactly (the full map), and with
the strided scorer at query strides 2 and 3. Reported per resolution level, as the mean share of the exact kept
set that another set also keeps: the strided scorers; the exact set of the previous step at the same block
(what reusing a map for the next step would keep); the exact set of the previous block at the same
resolution in the same call (what reusing it for the next block would keep). Random selection keeps
``1 - ratio`` of it on average: the floor every row is read against.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

import diffprune
from diffprune import tokens
from diffprune.evaluate import shapes_prompts


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the batch of |a ∩ b| / |a| for (B, K) index sets."""
    return float(torch.stack([torch.isin(x, y).float().mean() for x, y in zip(a, b)]).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="shapes")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=0.63)
    args = parser.parse_args(argv)
    pipe = diffprune.load(args.source)
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet
    blocks = [(name, m) for name, m in unet.named_modules()
              if type(m).__name__ == "Transformer2DModel" and len(getattr(m, "transformer_blocks", [])) > 0]
    latent = pipe.unet.config.sample_size
    scores = defaultdict(list)     # (level, what) -> overlaps
    state = {"previous_step": {}, "previous_block": {}, "grid": {}}

    def grid_hook(name):
        def hook(module, inputs, kwargs):
            x = inputs[0] if inputs else kwargs["hidden_states"]
            state["grid"][name] = (int(x.shape[-2]), int(x.shape[-1]))
        return hook

    def attention_hook(name):
        def hook(module, inputs, kwargs):
            x = inputs[0] if inputs else kwargs["hidden_states"]
            batch, n, _ = x.shape
            heads = module.heads
            q = module.to_q(x).view(batch, n, heads, -1).transpose(1, 2)
            k = module.to_k(x).view(batch, n, heads, -1).transpose(1, 2)
            grid = state["grid"][name]
            level = latent // grid[0]
            exact = tokens.rank_tokens(q, k, args.ratio, scale=module.scale)
            for stride in (2, 3):
                strided = tokens.rank_tokens(q, k, args.ratio, grid=grid, scorer="strided", query_stride=stride,
                                             scale=module.scale)
                scores[(level, f"strided, query stride {stride}")].append(_overlap(exact, strided))
            before = state["previous_step"].get(name)
            if before is not None and before.shape == exact.shape:
                scores[(level, "previous step, same block")].append(_overlap(exact, before))
            other = state["previous_block"].get(level)
            if other is not None and other.shape == exact.shape:
                scores[(level, "previous block, same call")].append(_overlap(exact, other))
            state["previous_step"][name] = exact
            state["previous_block"][level] = exact
        return hook

    unet.register_forward_pre_hook(lambda module, inputs: state["previous_block"].clear())
    for name, block in blocks:
        block.register_forward_pre_hook(grid_hook(name), with_kwargs=True)
        block.transformer_blocks[0].attn1.register_forward_pre_hook(attention_hook(name), with_kwargs=True)
    for prompt in shapes_prompts(args.prompts, seed=0):
        state["previous_step"].clear()
        with torch.inference_mode():
            pipe(prompt.caption, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(prompt.seed))
    print(f"{args.source}: {args.prompts} prompts x {args.steps} steps, ratio {args.ratio} (random keeps "
          f"{1 - args.ratio:.2f} of the exact set on average); share of the exact G-WPR kept set also kept by:")
    levels = sorted({level for level, _ in scores})
    whats = ["strided, query stride 2", "strided, query stride 3", "previous step, same block",
             "previous block, same call"]
    print(f"{'level (tokens)':<16}" + "".join(f"{w:>28}" for w in whats))
    for level in levels:
        tokens_at = (latent // level) ** 2
        cells = [scores.get((level, w)) for w in whats]
        print(f"{f'{level} ({tokens_at})':<16}" + "".join(
            f"{(sum(c) / len(c)) if c else float('nan'):>28.3f}" for c in cells))


if __name__ == "__main__":
    main()
