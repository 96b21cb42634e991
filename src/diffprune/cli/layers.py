"""``prune-layers``: a one-shot criterion or a BK-SDM preset — an alias of ``compress`` with a layers-only recipe.

Parsing and printing only; the options become a :class:`~diffprune.recipe.Recipe` run by the same path as
``compress``. Options are checked before the model is loaded, and nothing is written unless the whole run
succeeded.
"""

from __future__ import annotations

from diffprune.cli.common import positive_int
from diffprune.cli.compress import calibration_options, execute, write_json
from diffprune.cli.source import add_source_options


def add_commands(sub) -> None:
    from diffprune.layers import BUDGETS, CRITERIA, GRANULARITIES, PRESETS

    p = sub.add_parser("prune-layers", help="remove U-Net layers or transformer blocks (one-shot criterion, or a BK-SDM "
                                                  "preset for U-Nets); save")
    add_source_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the pruned pipeline to")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier diffprune output folder (and an existing --json file)")
    p.add_argument("--ratio", type=float, help="share of the denoiser to remove (by --budget)")
    p.add_argument("--preset", choices=PRESETS, help="handcrafted BK-SDM removal instead of a criterion")
    p.add_argument("--budget", choices=BUDGETS, default="params", help="what --ratio counts (default params)")
    p.add_argument("--criterion", default="output-loss", metavar="C", help=f"{' | '.join(CRITERIA)} (default "
                                                                             "output-loss)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="block",
                   help="block: whole attention modules; layer: single transformer layers (default block)")
    p.add_argument("--expressible", action="store_true",
                   help="only remove transformer layers a plain diffusers config can describe (implies "
                        "--granularity layer): unet/ then loads with UNet2DConditionModel.from_pretrained alone")
    p.add_argument("--calib-prompts", metavar="FILE", help="calibration prompts, one per line (default: testbed)")
    p.add_argument("--calib-num-prompts", type=positive_int,
                   help="calibration prompts used: the file's (repeated if shorter) or the testbed's (default 16)")
    p.add_argument("--calib-steps", type=positive_int, help="sampling steps per calibration run (default 10)")
    p.add_argument("--calib-timesteps", type=positive_int, default=5, help="recorded steps per prompt (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of random scores and calibration noise")
    p.add_argument("--json", metavar="FILE", help="also write what was removed and the achieved ratios")


def _recipe(args):
    from diffprune.errors import DiffpruneError
    from diffprune.recipe import Recipe

    if (args.ratio is None) == (args.preset is None):
        raise DiffpruneError("give exactly one of --ratio and --preset")
    if args.preset:
        layers = {"preset": args.preset}
    else:
        layers = {"ratio": args.ratio, "budget": args.budget, "criterion": args.criterion, "seed": args.seed,
                  "granularity": "layer" if args.expressible else args.granularity, "expressible": args.expressible}
    calibration = {**calibration_options(args), "seed": args.seed}
    return Recipe.from_dict({"name": "prune-layers", "layers": layers, "calibration": calibration})


def run(args) -> int:
    from diffprune.layers import is_layer_pruned_folder

    recipe = _recipe(args)  # every option checked before the (possibly long) load
    done = execute(args, recipe, weights_format="dense")
    result = done.result.layers
    label = f"preset {args.preset}" if args.preset else f"{result.config.criterion}, {result.config.granularity} granularity"
    removed, before, after = result.removed, result.params_before, result.params_after
    denoiser = "unet" if (done.out / "unet").is_dir() else "transformer"
    model_class = type(getattr(done.pipe, denoiser)).__name__
    kind = "diffprune-layers format" if is_layer_pruned_folder(done.out / denoiser) else f"plain diffusers {model_class}"
    label_d = "U-Net" if denoiser == "unet" else "transformer"
    print(f"{args.source}: removed {len(removed)} unit(s) by {label}; saved to {done.out} ({denoiser}: {kind})")
    for name in removed:
        print(f"  - {name}")
    print(f"  {label_d} parameters: {before:,} -> {after:,} ({1 - after / before:.2%} removed)")
    print(f"  {label_d} FLOPs per call: {result.flops_before / 1e9:.3f} -> {result.flops_after / 1e9:.3f} GFLOPs "
          f"({result.flops_ratio:.2%} removed)")
    if args.json:
        write_json(args, done, {"source": args.source, "method": label, "removed": removed, "params_before": before,
                                "params_after": after, "out": str(done.out), f"{denoiser}_format": kind,
                                "flops_before": result.flops_before, "flops_after": result.flops_after})
    return 0
