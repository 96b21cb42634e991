"""The ``generate`` command: images from prompts, optionally with run-time token pruning."""

from __future__ import annotations

import sys
from pathlib import Path

from diffprune.cli.common import add_tokens, parse_tokens_option, positive_int
from diffprune.cli.source import add_source_options, input_paths, load_source


def add_commands(sub) -> None:
    p = sub.add_parser("generate", help="generate images from prompts (optionally with run-time token pruning)")
    add_source_options(p)
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several images)")
    p.add_argument("--out", required=True, metavar="FILE.png",
                   help="image to write (several prompts: one grid, a row per prompt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing image")
    p.add_argument("--steps", type=positive_int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--resolution", type=positive_int, help="image side in pixels (default: the model's own)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cpu)")
    add_tokens(p)


def run(args) -> int:
    import time

    import torch

    from diffprune._fs import atomic_write_bytes, check_outputs
    from diffprune.anatomy import call_options
    from diffprune.errors import DiffpruneError
    from diffprune.evaluate.generate import image_size, to_pil
    from diffprune.io import input_folder
    from diffprune.prompt_files import check_prompt
    from diffprune.report import image_grid_png

    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".png":
        raise DiffpruneError(f"--out must name a .png file, got {args.out}")
    for i, prompt in enumerate(args.prompt):
        check_prompt(prompt, f"--prompt #{i + 1}")
    check_outputs(files={"--out": out}, overwrite=args.overwrite, protect=input_paths(args))
    token_config = parse_tokens_option(args)
    pipe = load_source(args, device=args.device)
    if not hasattr(pipe, "scheduler"):
        raise DiffpruneError(f"{args.source} is not a pipeline; generate needs one")
    if token_config is not None:
        from diffprune import tokens

        tokens.apply(pipe, token_config)
    side = args.resolution or image_size(pipe)
    pipe.set_progress_bar_config(disable=not sys.stderr.isatty())
    generators = [torch.Generator(device=pipe.device).manual_seed(args.seed + i) for i in range(len(args.prompt))]
    start = time.perf_counter()
    with torch.inference_mode():
        images = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                      height=side, width=side, generator=generators, output_type="pt",
                      **call_options(pipe)).images
    seconds = time.perf_counter() - start
    png = image_grid_png(to_pil(images), columns=len(args.prompt) if len(args.prompt) <= 8 else 8)
    atomic_write_bytes(out, png, overwrite=args.overwrite, protect=[*input_paths(args), input_folder(pipe)])
    print(f"{args.source}: {len(args.prompt)} image(s) at {side}x{side}, {args.steps} steps, {seconds:.1f} s"
          + (f", tokens {token_config.spec()}" if token_config else "") + f"; wrote {out}")
    return 0
