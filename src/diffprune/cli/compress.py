"""The ``compress`` command: every family through one recipe (a file, a shipped recipe, or specs), saved.

Parsing and printing only; :mod:`diffprune.recipe` does the work. The recipe is checked before the model is
loaded, and nothing is written unless the whole run succeeded.
"""

from __future__ import annotations

import json
import sys

from diffprune.cli.common import positive_int
from diffprune.cli.source import add_source_options, input_paths, load_source


def add_commands(sub) -> None:
    p = sub.add_parser("compress", help="apply a recipe (layers -> weights -> tokens) and save the result")
    add_source_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the compressed pipeline to")
    p.add_argument("--recipe", metavar="FILE|NAME",
                   help="a YAML/JSON recipe, or a shipped one: sd2-study, laptop-50, atedm, stack")
    p.add_argument("--layers", metavar="SPEC", help="CRITERION:ratio=R[,budget=flops,...] or preset:NAME")
    p.add_argument("--weights", metavar="SPEC", action="append",
                   help="COMPONENT=METHOD:sparsity=S[,key=value...], repeatable (e.g. unet=wanda:sparsity=0.3)")
    p.add_argument("--tokens", metavar="SPEC", help="token pruning spec, e.g. atedm:ratio=0.63")
    p.add_argument("--calib-num-prompts", type=positive_int, help="calibration prompts (default 16)")
    p.add_argument("--calib-steps", type=positive_int, help="sampling steps per calibration run (default 10)")
    p.add_argument("--weights-format", choices=["dense", "bitmask"], default="dense",
                   help="dense: stock diffusers folder (default); bitmask: sparse files that shrink with sparsity")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier diffprune output folder (and an existing --json file)")
    p.add_argument("--json", metavar="FILE", help="also write what each step did")


def _recipe(args):
    from diffprune.errors import DiffpruneError
    from diffprune.recipe import load_recipe, recipe_from_specs

    specs = args.layers is not None or args.weights or args.tokens is not None
    if (args.recipe is None) == (not specs):
        raise DiffpruneError("give either --recipe or step specs (--layers, --weights, --tokens)")
    if args.recipe is not None:
        recipe = load_recipe(args.recipe)
        if args.calib_num_prompts or args.calib_steps:
            raise DiffpruneError("--calib-* options go with step specs; a recipe file holds its own calibration")
        return recipe
    calibration = {k: v for k, v in (("num_prompts", args.calib_num_prompts), ("steps", args.calib_steps))
                   if v is not None}
    return recipe_from_specs(args.layers, args.weights, args.tokens, calibration)


def run(args) -> int:
    from diffprune import save
    from diffprune._fs import atomic_write_text, check_outputs
    from diffprune.io import input_folder
    from diffprune.recipe import compress
    from diffprune.report import to_jsonable

    recipe = _recipe(args)  # checked before the (possibly long) load
    inputs = input_paths(args)
    check_outputs({"--out": args.out}, {"--json": args.json}, overwrite=args.overwrite, protect=inputs)
    pipe = load_source(args)
    result = compress(pipe, recipe, progress=sys.stderr.isatty())
    out = save(pipe, args.out, weights_format=args.weights_format, overwrite=args.overwrite)
    print(f"{args.source}: compressed with {recipe.name or 'the given steps'}; saved to {out}")
    if result.layers is not None:
        r = result.layers
        print(f"  layers: U-Net parameters {r.params_before:,} -> {r.params_after:,} ({r.params_ratio:.1%} removed)")
    if result.weights is not None:
        for name, c in result.weights.components.items():
            print(f"  weights: {name} {c.method} {c.pattern}, {c.sparsity:.1%} of the pruned layers zero")
    if result.tokens is not None:
        print(f"  tokens: {result.tokens} (re-applied when the folder is loaded)")
    if args.json:
        atomic_write_text(args.json, json.dumps(to_jsonable({"source": args.source, "out": str(out),
                                                             **result.to_json()}), indent=2) + "\n",
                          overwrite=args.overwrite, protect=[*inputs, input_folder(pipe)])
        print(f"  wrote {args.json}")
    return 0
