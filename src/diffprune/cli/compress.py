"""The ``compress`` command: every family through one recipe (a file, a shipped recipe, or specs), saved.

Parsing and printing only; :mod:`diffprune.recipe` does the work. The recipe is checked before the model is
loaded, and nothing is written unless the whole run succeeded.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from diffprune.cli.common import positive_int
from diffprune.cli.source import add_source_options, input_paths, load_source


def add_commands(sub) -> None:
    p = sub.add_parser("compress", help="apply a recipe (layers -> weights -> tokens) and save the result")
    add_source_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the compressed pipeline to")
    p.add_argument("--recipe", metavar="FILE|NAME",
                   help="a YAML/JSON recipe, or a shipped one: sd2-study, laptop-50, atedm, stack, dit-half")
    p.add_argument("--layers", metavar="SPEC", help="CRITERION:ratio=R[,budget=flops,...] or preset:NAME")
    p.add_argument("--weights", metavar="SPEC", action="append",
                   help="COMPONENT=METHOD:sparsity=S[,key=value...], repeatable (e.g. unet=wanda:sparsity=0.3)")
    p.add_argument("--tokens", metavar="SPEC", help="token pruning spec, e.g. atedm:ratio=0.63")
    p.add_argument("--calib-prompts", metavar="FILE", help="calibration prompts, one per line (default: testbed)")
    p.add_argument("--calib-num-prompts", type=positive_int, help="calibration prompts (default 16)")
    p.add_argument("--calib-steps", type=positive_int, help="sampling steps per calibration run (default 10)")
    p.add_argument("--weights-format", choices=["dense", "bitmask"], default="dense",
                   help="dense: stock diffusers folder (default); bitmask: sparse files that shrink with sparsity")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier diffprune output folder (and an existing --json file)")
    p.add_argument("--json", metavar="FILE", help="also write what each step did")
    p.add_argument("--work", metavar="DIR", help="where a recipe's distill step keeps its log and checkpoints")


def _recipe(args):
    from diffprune.errors import DiffpruneError
    from diffprune.recipe import load_recipe, recipe_from_specs

    specs = args.layers is not None or args.weights or args.tokens is not None
    if (args.recipe is None) == (not specs):
        raise DiffpruneError("give either --recipe or step specs (--layers, --weights, --tokens)")
    if args.recipe is not None:
        recipe = load_recipe(args.recipe)
        if args.calib_num_prompts or args.calib_steps or args.calib_prompts:
            raise DiffpruneError("--calib-* options go with step specs; a recipe file holds its own calibration")
        return recipe
    return recipe_from_specs(args.layers, args.weights, args.tokens, calibration_options(args))


def calibration_options(args) -> dict:
    """The ``--calib-*`` options that were given, as a recipe's calibration keys."""
    from diffprune.prompt_files import read_prompt_file

    given = {"prompts": read_prompt_file(args.calib_prompts) if getattr(args, "calib_prompts", None) else None,
             "num_prompts": args.calib_num_prompts, "steps": args.calib_steps,
             "timesteps": getattr(args, "calib_timesteps", None), "seed": getattr(args, "calib_seed", None)}
    return {k: v for k, v in given.items() if v is not None}


@dataclass
class Compressed:
    """What :func:`execute` did: the compressed pipeline, each step's result, and where it was saved."""

    pipe: object
    result: object
    out: Path
    inputs: list


def execute(args, recipe, *, weights_format: str) -> Compressed:
    """The one path of every compressing command: outputs checked, source loaded, ``recipe`` applied by
    :func:`diffprune.compress`, the pipeline saved to ``--out``."""
    from diffprune import save
    from diffprune._fs import check_outputs
    from diffprune.anatomy import describe_kind, is_pipeline
    from diffprune.errors import DiffpruneError
    from diffprune.recipe import compress

    inputs = input_paths(args)
    check_outputs({"--out": args.out}, {"--json": args.json}, overwrite=args.overwrite, protect=inputs)
    pipe = load_source(args)
    if not is_pipeline(pipe):
        raise DiffpruneError(f"{args.source} is {describe_kind(pipe)}, not a pipeline; {args.command} needs one: "
                             "give the whole pipeline folder "
                             "(the Python API prunes bare modules: diffprune.weights.prune, diffprune.layers.prune)")
    result = compress(pipe, recipe, progress=sys.stderr.isatty(), work_dir=getattr(args, "work", None))
    out = save(pipe, args.out, weights_format=weights_format, overwrite=args.overwrite)
    return Compressed(pipe, result, out, inputs)


def write_json(args, done: Compressed, data: dict) -> None:
    """``data`` to ``--json`` (atomically; never over an input)."""
    from diffprune._fs import atomic_write_text
    from diffprune.io import input_folder
    from diffprune.report import to_jsonable

    atomic_write_text(args.json, json.dumps(to_jsonable(data), indent=2) + "\n", overwrite=args.overwrite,
                      protect=[*done.inputs, input_folder(done.pipe)])
    print(f"  wrote {args.json}")


def run(args) -> int:
    recipe = _recipe(args)  # checked before the (possibly long) load
    done = execute(args, recipe, weights_format=args.weights_format)
    print(f"{args.source}: compressed with {recipe.name or 'the given steps'}; saved to {done.out}")
    for step in done.result.steps:
        print(f"  {step.family}: {step.summary()}")
    if done.result.tokens is not None:
        print("  (the token step is re-applied when the folder is loaded)")
    if args.json:
        write_json(args, done, {"source": args.source, "out": str(done.out), **done.result.to_json()})
    return 0
