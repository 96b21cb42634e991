"""Where the shapes testbed puts an object for each of the nine position phrases, and how much the text
encoder says about position.

Run: python benchmarks/testbed_position_probe.py [--seeds 8] [--steps 20]
Prints (1) for each phrase, the grid cells the evaluator reads on images of "a large <colour> square in the
<phrase>" over several seeds, with the share placed right; (2) how far the text encoder's states move when
only the position phrase changes, against when only the colour changes, per token slot.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

import diffprune
from diffprune.testbed.evaluator import load_evaluator
from diffprune.testbed.world import COLORS, POSITIONS


def _cells(pipe, evaluator, prompts, seeds, steps):
    out = []
    for seed in seeds:
        generators = [torch.Generator().manual_seed(seed) for _ in prompts]
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=5.0, generator=generators,
                      output_type="pt").images
        out.append([found[0].position if found else None for found in evaluator.read(images)])
    return out


def _encode(pipe, prompts):
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0], ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    pipe, evaluator = diffprune.load("shapes"), load_evaluator()
    pipe.set_progress_bar_config(disable=True)
    right = total = 0
    print(f"{'phrase':<16}{'right':>7}  cells read (row-major 0..8) over {args.seeds} seeds x {len(COLORS)} colours")
    for p, phrase in enumerate(POSITIONS):
        prompts = [f"a large {c} square in the {phrase}" for c in COLORS]
        cells = [c for row in _cells(pipe, evaluator, prompts, range(args.seeds), args.steps) for c in row]
        hits = sum(c == p for c in cells)
        right, total = right + hits, total + len(cells)
        counts = ", ".join(f"{c}:{n}" for c, n in sorted(Counter(cells).items(), key=lambda kv: -kv[1]))
        print(f"{phrase:<16}{hits / len(cells):>7.2f}  {counts}")
    print(f"{'all':<16}{right / total:>7.2f}  (chance 0.11)")

    base = "a large blue square in the top left"
    variants = {"position": ["a large blue square in the bottom right", "a large blue square in the center"],
                "colour": ["a large red square in the top left", "a large green square in the top left"]}
    h_base, ids = _encode(pipe, [base])
    words = pipe.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    n_words = int((ids[0] != pipe.tokenizer.pad_token_id).sum()) if pipe.tokenizer.pad_token_id is not None else 10
    print("\ntext-encoder state distance from '" + base + "' per token slot")
    print(f"{'changed':<10}" + "".join(f"{w.replace('</w>', '')[:9]:>10}" for w in words[:n_words + 2]))
    for what, prompts in variants.items():
        h, _ = _encode(pipe, prompts)
        d = (h - h_base).norm(dim=-1).mean(0)
        print(f"{what:<10}" + "".join(f"{float(v):>10.2f}" for v in d[:n_words + 2]))


if __name__ == "__main__":
    main()
