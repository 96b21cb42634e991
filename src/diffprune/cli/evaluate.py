"""The ``eval`` command: the quality suites, in one process or several (torchrun / accelerate)."""

from __future__ import annotations

import json
import sys

from diffprune.cli.common import add_generation_options, add_tokens, parse_tokens_option, positive_int
from diffprune.cli.source import add_source_options, input_paths, load_source


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a pipeline: shapes (exact), fidelity, clip, pickscore, fid")
    add_source_options(p)
    p.add_argument("--suite", default="shapes", choices=["shapes", "fidelity", "clip", "pickscore", "fid"])
    p.add_argument("--prompts", type=positive_int, metavar="N", help="evaluate the first N prompts only")
    p.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (not for the shapes suite)")
    p.add_argument("--split", choices=["heldout", "train"], default="heldout",
                   help="shapes prompts: held-out combinations (default) or the training split")
    p.add_argument("--seed", type=int, default=0, help="shifts every prompt's seed (default 0)")
    add_generation_options(p)
    p.add_argument("--reference", metavar="SOURCE", help="fidelity: the uncompressed pipeline (default: shapes)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cpu)")
    add_tokens(p)
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--report", metavar="DIR", help="write a report folder (metrics, image grids, per prompt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder or JSON file")


def run(args) -> int:
    from diffprune._fs import atomic_write_text, check_outputs
    from diffprune.evaluate import EvalConfig, check_inputs, evaluate, write_report
    from diffprune.evaluate.generate import is_main_process, process_count, process_device
    from diffprune.io import input_folder
    from diffprune.report import fmt, to_jsonable

    inputs = input_paths(args)
    # checked before the (long) run, so a bad path costs nothing
    check_outputs({"--report": args.report}, {"--json": args.json}, overwrite=args.overwrite, protect=inputs)
    config = EvalConfig(suite=args.suite, prompts=args.prompts, prompts_file=args.prompts_file, seed=args.seed,
                        steps=args.steps, guidance_scale=args.guidance_scale, batch_size=args.batch_size,
                        reference=args.reference, clip_model=args.clip_model,
                        pickscore_model=args.pickscore_model, pickscore_processor=args.pickscore_processor,
                        inception_weights=args.inception_weights, reference_images=args.reference_images,
                        progress=sys.stderr.isatty(), split=args.split)
    check_inputs(config)  # before the (possibly long) load
    token_config = parse_tokens_option(args)
    device = process_device(args.device)
    pipe = load_source(args, device=device)
    if token_config is not None:
        from diffprune import tokens

        tokens.apply(pipe, token_config)
    result = evaluate(pipe, config, dtype=args.dtype, device=device)
    if not is_main_process():  # under a multi-process launcher, one process reports
        return 0
    n = process_count()
    print(f"{args.source}: {args.suite} suite, {result.metrics['n_images']} images, "
          f"{result.metrics['seconds']:.1f} s" + (f" on {n} processes" if n > 1 else ""))
    for key, value in result.metrics.items():
        if key not in ("n_images", "seconds"):
            print(f"  {key:<26}{fmt(value)}")
    protect = [*inputs, input_folder(pipe)]
    if args.json:
        atomic_write_text(args.json, json.dumps(to_jsonable(result.to_json()), indent=2) + "\n",
                          overwrite=args.overwrite, protect=protect)
        print(f"  wrote {args.json}")
    if args.report:
        folder = write_report(result, args.report, source=args.source, overwrite=args.overwrite, protect=protect)
        print(f"  report: {folder / 'report.md'}")
    return 0
