"""The weight-pruning commands of the ``diffprune`` CLI: ``prune-weights`` (an alias of ``compress`` with a
weights-only recipe), ``sweep`` and ``search``.

Parsing and printing only; the work is done by :mod:`diffprune.recipe` and :mod:`diffprune.weights`. Every option is checked before the
model is loaded, and nothing is written unless the whole run succeeded.
"""

from __future__ import annotations

import argparse
import sys

from diffprune.cli.common import add_generation_options, positive_int
from diffprune.cli.compress import calibration_options, execute, write_json
from diffprune.cli.source import add_source_options, input_paths, load_source
from diffprune.errors import DiffpruneError

_COMPONENT_FLAGS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
_DENOISERS = ("unet", "transformer")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_pruning_options(p) -> None:
    p.add_argument("--pattern", default="unstructured", help="unstructured (default) or N:M such as 2:4, 4:8")
    p.add_argument("--scope", choices=["layer", "global"],
                   help="magnitude only: one threshold per weight matrix (default) or one per component")
    p.add_argument("--conv", action="store_true",
                   help="also prune Conv2d layers of the denoiser (U-Net; Sana's Mix-FFN)")
    p.add_argument("--calib-prompts", metavar="FILE", help="calibration prompts, one per line (default: testbed)")
    p.add_argument("--calib-num-prompts", type=positive_int,
                   help="calibration prompts used: the file's (repeated if shorter) or the testbed's (default 16)")
    p.add_argument("--calib-steps", type=positive_int, help="denoising steps per calibration run (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of random pruning and calibration noise")


def _add_suite_options(p) -> None:
    p.add_argument("--metric", default="accuracy_all", help="metric to follow (default accuracy_all; fd: lower is "
                                                            "better)")
    p.add_argument("--suite", default="shapes", choices=["shapes", "clip", "pickscore", "fid"])
    p.add_argument("--prompts", type=positive_int, metavar="N", help="evaluate the first N prompts")
    p.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (clip, pickscore, fid)")
    add_generation_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (report.md, report.json, PNG)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report folder")


def add_commands(sub) -> None:
    p = sub.add_parser("prune-weights",
                       help="prune weights of text encoder(s) and U-Net or transformer; save a sparse folder")
    add_source_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the pruned pipeline to")
    p.add_argument("--method", default="magnitude", metavar="M",
                   help="magnitude (default), wanda, owl (text encoders), sparsegpt, random")
    for flag in _COMPONENT_FLAGS:
        dashed = flag.replace("_", "-")
        p.add_argument(f"--{dashed}-sparsity", type=float, metavar="S", help=f"share of {flag} weights to zero")
    _add_pruning_options(p)
    p.add_argument("--format", choices=["bitmask", "dense"], default="bitmask",
                   help="bitmask: sparse files that shrink (default); dense: stock diffusers files with zeros")
    p.add_argument("--json", metavar="FILE", help="also write what was achieved as JSON")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier diffprune output folder (and an existing --json file)")

    p = sub.add_parser("sweep", help="quality against sparsity per component and method, with collapse points")
    add_source_options(p)
    p.add_argument("--methods", type=_names, default=["magnitude"], help="comma-separated (default magnitude)")
    p.add_argument("--components", type=_names, default=["text_encoder", "denoiser"],
                   help="comma-separated: text_encoder, text_encoder_2, text_encoder_3, unet, transformer, or "
                        "denoiser for whichever of the last two the pipeline has (default text_encoder,denoiser)")
    p.add_argument("--sparsities", type=_floats, default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                   help="comma-separated grid (default 0.1,...,0.7)")
    p.add_argument("--collapse-fraction", type=float, default=0.5,
                   help="collapse: quality below this share of dense (default 0.5)")
    _add_pruning_options(p)
    _add_suite_options(p)

    p = sub.add_parser("search", help="highest per-component sparsities within a quality budget")
    add_source_options(p)
    p.add_argument("--budget", type=float, required=True, help="largest allowed drop of the metric (0.02 = 2 points)")
    p.add_argument("--method", default="magnitude", metavar="M", help="pruning method (default magnitude)")
    p.add_argument("--components", type=_names, default=["text_encoder", "denoiser"],
                   help="comma-separated: text_encoder, text_encoder_2, text_encoder_3, unet, transformer, or "
                        "denoiser for whichever of the last two the pipeline has (default text_encoder,denoiser)")
    p.add_argument("--step", type=float, default=0.025, help="sparsity grid step (default 0.025)")
    p.add_argument("--max-sparsity", type=float, default=0.9, help="largest sparsity tried (default 0.9)")
    _add_pruning_options(p)
    _add_suite_options(p)


def _calibration(args):
    from diffprune.prompt_files import read_prompt_file
    from diffprune.weights import CalibrationConfig

    prompts = read_prompt_file(args.calib_prompts) if args.calib_prompts else None
    given = {"num_prompts": args.calib_num_prompts, "steps": args.calib_steps}
    config = CalibrationConfig(prompts=prompts, seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    config.validate()
    return config


def _recipe(args):
    """``prune-weights`` as a weights-only recipe (the method's options checked by the recipe: one the method does
    not use is an error)."""
    from diffprune.recipe import Recipe

    # --seed also seeds the calibration noise: it is random pruning's own option only for that method
    options = {"pattern": args.pattern, "scope": args.scope, "seed": args.seed if args.method == "random" else None}
    weights = {}
    for component in _COMPONENT_FLAGS:
        value = getattr(args, f"{component}_sparsity")
        if value is None:
            continue
        if not 0 <= value < 1:
            raise DiffpruneError(f"--{component.replace('_', '-')}-sparsity must be in [0, 1), got {value:g}")
        given = {**options, "include_conv": True if args.conv and component in _DENOISERS else None}
        weights[component] = {"method": args.method, "sparsity": value,
                              **{k: v for k, v in given.items() if v is not None}}
    if not weights:
        raise DiffpruneError("give at least one of --unet-sparsity, --transformer-sparsity, --text-encoder-sparsity, "
                             "--text-encoder-2-sparsity, --text-encoder-3-sparsity")
    calibration = {**calibration_options(args), "seed": args.seed}
    return Recipe.from_dict({"name": "prune-weights", "weights": weights, "calibration": calibration})


def _load(args):
    from torch import nn

    pipe = load_source(args)
    if isinstance(pipe, nn.Module):
        raise DiffpruneError(f"{args.source} is a single {type(pipe).__name__}; give the whole pipeline folder "
                             "(the Python API prunes bare modules: diffprune.weights.prune)")
    return pipe


def _prune_weights(args) -> int:
    from diffprune.measure import disk_usage

    recipe = _recipe(args)  # every option checked before the (possibly long) load
    done = execute(args, recipe, weights_format=args.format)
    result, out, pipe = done.result.weights, done.out, done.pipe
    usage = disk_usage(out)
    print(f"{args.source}: pruned with {args.method} ({args.pattern}), saved to {out} ({args.format})")
    print(f"  {'component':<16}{'target':>8}{'achieved':>10}{'of component':>14}{'layers':>8}{'on disk':>12}"
          f"{'dense':>12}")
    for name, r in result.components.items():
        dense = r.component_params * next(getattr(pipe, name).parameters()).element_size()
        print(f"  {name:<16}{r.target_sparsity:>8.1%}{r.sparsity:>10.2%}{r.component_sparsity:>14.2%}"
              f"{r.layers:>8}{usage.components.get(name, 0) / 2**20:>10.2f}Mi{dense / 2**20:>10.2f}Mi")
    print(f"  total on disk: {usage.total_bytes / 2**20:.2f} MiB")
    if args.json:
        write_json(args, done, {"source": args.source, "method": args.method, "format": args.format,
                                "out": str(out), "components": result.to_json(), "disk_bytes": usage.components})
    return 0


def _scorer(args):
    from diffprune.evaluate import EvalConfig, check_inputs, evaluate

    config = EvalConfig(suite=args.suite, prompts=args.prompts, prompts_file=args.prompts_file,
                        steps=args.steps, guidance_scale=args.guidance_scale, batch_size=args.batch_size,
                        clip_model=args.clip_model, pickscore_model=args.pickscore_model,
                        pickscore_processor=args.pickscore_processor, inception_weights=args.inception_weights, reference_images=args.reference_images,
                        progress=False)
    check_inputs(config)
    return lambda pipe: {k: v for k, v in evaluate(pipe, config).metrics.items() if isinstance(v, (int, float))}


def _prepared(args, config, title: str):
    """Everything checked (config, report folder, suite inputs, calibration) before the model is loaded."""
    from diffprune.report import Report

    config.validate()
    report = Report(args.out, title=f"{title}: {args.source}", overwrite=args.overwrite,
                    protect=input_paths(args))
    scorer, calibration, pipe = _scorer(args), _calibration(args), _load(args)
    return report, scorer, calibration, pipe


def _sweep(args) -> int:
    from diffprune.weights.sweep import SweepConfig, fmt_table, plot_sweep, run_sweep

    config = SweepConfig(methods=args.methods, components=args.components, sparsities=args.sparsities,
                         metric=args.metric, pattern=args.pattern, include_conv=args.conv, scope=args.scope or "layer",
                         seed=args.seed, collapse_fraction=args.collapse_fraction)
    report, score, calibration, pipe = _prepared(args, config, "diffprune sweep")
    result = run_sweep(pipe, config, score, calibration, progress=sys.stderr.isatty())
    fraction = config.collapse_fraction
    report.text(f"Suite `{args.suite}`, metric `{args.metric}`; dense: {result.dense[args.metric]:.4g}. "
                f"Collapse: the first sparsity whose {args.metric} is "
                + (f"above {1 / fraction:g}x dense." if args.metric in ("fd", "fid") else f"below {fraction:g}x dense."))
    report.figure("sweep", plot_sweep(result, fraction), heading="Quality against sparsity")
    rows = [dict(zip(("method", "component", "sparsity", args.metric, "drop"), r)) for r in fmt_table(result)]
    report.table(rows, heading="Points")
    report.metrics("sweep", result.to_json(fraction))
    folder = report.write()
    print(f"{args.source}: {args.metric} dense {result.dense[args.metric]:.4g}")
    for row in rows:
        print(f"  {row['method']:<10}{row['component']:<16}{row['sparsity']:>7}  {row[args.metric]:.4g}")
    for key, at in result.to_json(fraction)["collapse"].items():
        print(f"  collapse {key}: {'none in the grid' if at is None else f'{at:.1%}'}")
    print(f"  report: {folder / 'report.md'}")
    return 0


def _search(args) -> int:
    from diffprune.weights.search import SearchConfig, search

    config = SearchConfig(method=args.method, components=args.components, budget=args.budget, metric=args.metric,
                          step=args.step, max_sparsity=args.max_sparsity, pattern=args.pattern,
                          include_conv=args.conv, scope=args.scope or "layer", seed=args.seed)
    report, score, calibration, pipe = _prepared(args, config, "diffprune search")
    result = search(pipe, config, score, calibration, progress=sys.stderr.isatty())
    best = ", ".join(f"{c} {s:.1%}" for c, s in result.best.items())
    report.text(f"Method `{args.method}`, budget {args.budget:g} of `{args.metric}` "
                f"(dense {result.dense[args.metric]:.4g}). Best: {best}; {args.metric} {result.value:.4g} "
                f"(drop {result.drop:.4g}).")
    report.table([{**{c: f"{s:.1%}" for c, s in e["sparsities"].items()}, args.metric: e["value"], "drop": e["drop"]}
                  for e in result.evaluations], heading="Evaluations, in order")
    report.metrics("search", result.to_json())
    folder = report.write()
    print(f"{args.source}: best within a {args.budget:g} drop of {args.metric}: {best}")
    print(f"  {args.metric}: dense {result.dense[args.metric]:.4g}, pruned {result.value:.4g} "
          f"({len(result.evaluations)} evaluations)")
    print(f"  report: {folder / 'report.md'}")
    return 0


def run(args) -> int:
    return {"prune-weights": _prune_weights, "sweep": _sweep, "search": _search}[args.command](args)
