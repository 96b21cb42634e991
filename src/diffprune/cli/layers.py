"""The layer-pruning command of the ``diffprune`` CLI: ``prune-layers`` (a one-shot criterion or a BK-SDM preset).

Parsing and printing only; the work is done by :mod:`diffprune.layers`. Options are checked before the model
is loaded, and nothing is written unless the whole run succeeded.
"""

from __future__ import annotations

import json
import sys

from diffprune.cli.common import positive_int
from diffprune.cli.source import add_source_options, input_paths, load_source


def add_commands(sub) -> None:
    from diffprune.layers import BUDGETS, CRITERIA, GRANULARITIES, PRESETS

    p = sub.add_parser("prune-layers", help="remove U-Net layers (one-shot criterion or BK-SDM preset); save")
    add_source_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the pruned pipeline to")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier diffprune output folder (and an existing --json file)")
    p.add_argument("--ratio", type=float, help="share of the U-Net to remove (by --budget)")
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
    p.add_argument("--calib-num-prompts", type=positive_int, default=16, help="calibration prompts used, the first N of the file or the testbed's (default 16)")
    p.add_argument("--calib-steps", type=positive_int, default=10, help="sampling steps per calibration run")
    p.add_argument("--calib-timesteps", type=positive_int, default=5, help="recorded steps per prompt (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of random scores and calibration noise")
    p.add_argument("--json", metavar="FILE", help="also write what was removed and the achieved ratios")


def _config(args):
    from diffprune.errors import DiffpruneError
    from diffprune.layers import LayerCalibrationConfig, LayerPruningConfig

    if (args.ratio is None) == (args.preset is None):
        raise DiffpruneError("give exactly one of --ratio and --preset")
    if args.preset:
        return None
    prompts = None
    if args.calib_prompts:
        from diffprune.prompt_files import read_prompt_file

        prompts = read_prompt_file(args.calib_prompts)
    calibration = LayerCalibrationConfig(prompts=prompts, num_prompts=args.calib_num_prompts,
                                         steps=args.calib_steps, timesteps=min(args.calib_timesteps, args.calib_steps),
                                         seed=args.seed)
    granularity = "layer" if args.expressible else args.granularity
    return LayerPruningConfig(ratio=args.ratio, budget=args.budget, criterion=args.criterion,
                              granularity=granularity, calibration=calibration, seed=args.seed,
                              expressible=args.expressible)


def run(args) -> int:
    from diffprune import save
    from diffprune._fs import atomic_write_text, check_outputs
    from diffprune.errors import DiffpruneError
    from diffprune.io import input_folder
    from diffprune.layers import apply_preset, prune
    from diffprune.report import to_jsonable

    inputs = input_paths(args)
    config = _config(args)  # every option checked before the (possibly long) load
    check_outputs({"--out": args.out}, {"--json": args.json}, overwrite=args.overwrite, protect=inputs)
    pipe = load_source(args)
    if type(getattr(pipe, "unet", None)).__name__ != "UNet2DConditionModel":
        raise DiffpruneError(f"{args.source} is not a pipeline with a UNet2DConditionModel; prune-layers needs one")
    if config is None:
        result = apply_preset(pipe, args.preset)
        label = f"preset {args.preset}"
    else:
        result = prune(pipe, config, progress=sys.stderr.isatty())
        label = f"{config.criterion}, {config.granularity} granularity"
    removed, before, after = result.removed, result.params_before, result.params_after
    out = save(pipe, args.out, overwrite=args.overwrite)
    from diffprune.layers.storage import is_layer_pruned_folder

    kind = "diffprune-layers format" if is_layer_pruned_folder(out / "unet") else "plain diffusers UNet2DConditionModel"
    print(f"{args.source}: removed {len(removed)} unit(s) by {label}; saved to {out} (unet: {kind})")
    for name in removed:
        print(f"  - {name}")
    print(f"  U-Net parameters: {before:,} -> {after:,} ({1 - after / before:.2%} removed)")
    print(f"  U-Net FLOPs per call: {result.flops_before / 1e9:.3f} -> {result.flops_after / 1e9:.3f} GFLOPs "
          f"({result.flops_ratio:.2%} removed)")
    if args.json:
        data = {"source": args.source, "method": label, "removed": removed, "params_before": before,
                "params_after": after, "out": str(out), "unet_format": kind}
        data.update(flops_before=result.flops_before, flops_after=result.flops_after)
        atomic_write_text(args.json, json.dumps(to_jsonable(data), indent=2) + "\n", overwrite=args.overwrite,
                          protect=[*inputs, input_folder(pipe)])
        print(f"  wrote {args.json}")
    return 0
