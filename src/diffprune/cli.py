"""The ``diffprune`` command: parse arguments, call the Python API, print results.

A mistake the user can fix is reported as one line on stderr with exit status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from diffprune.cli_source import add_source_options, input_paths, load_source


_DISK_REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
                   errno.ENOLCK}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line and our exit code
        raise _UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_generation_options(p: argparse.ArgumentParser) -> None:
    """Sampler settings and the local metric weights, shared by ``eval``, ``sweep`` and ``search``."""
    p.add_argument("--steps", type=_positive_int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance (default 5)")
    p.add_argument("--batch-size", type=_positive_int, default=25, help="images per pipeline call (default 25)")
    p.add_argument("--clip-model", metavar="DIR", help="clip: local transformers CLIP folder")
    p.add_argument("--pickscore-model", metavar="DIR", help="pickscore: local PickScore (CLIP) folder")
    p.add_argument("--pickscore-processor", metavar="DIR", help="pickscore: processor folder if not with the model")
    p.add_argument("--inception-weights", metavar="FILE", help="fid: local FID Inception weights (.pth)")
    p.add_argument("--reference-images", metavar="DIR", help="fid: folder of real images")


def _add_tokens(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", metavar="SPEC",
                   help="prune tokens at run time, e.g. atedm:ratio=0.63,dsap=on | tome:ratio=0.5 | random:ratio=0.63 "
                        "(see docs/tokens.md)")


def _token_config(args):
    """The parsed --tokens spec (checked before any loading), or None."""
    if not getattr(args, "tokens", None):
        return None
    from diffprune.tokens import parse_spec

    return parse_spec(args.tokens)


def build_parser() -> argparse.ArgumentParser:
    from diffprune import __version__

    parser = _Parser(prog="diffprune", description="Make Stable Diffusion pipelines smaller and faster, "
                                                   "and measure what it cost.")
    parser.add_argument("--version", action="version", version=f"diffprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("info", help="describe a model: family, components, parameters, files")
    add_source_options(p)

    p = sub.add_parser("measure", help="parameters, FLOPs per call (attention included), optional latency")
    add_source_options(p)
    p.add_argument("--resolution", type=_positive_int, help="image side in pixels (default: the model's own)")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size of each call (default 1)")
    p.add_argument("--latency", type=_positive_int, metavar="N",
                   help="also time N U-Net calls (median; needs real weights, slow for big models)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda[:i] or meta (random:<arch> defaults to meta: no memory, no non-zero counts)")
    _add_tokens(p)
    p.add_argument("--steps", type=_positive_int, metavar="N",
                   help="report U-Net FLOPs as the mean over an N-step schedule (default with --tokens: 20)")
    p.add_argument("--json", metavar="FILE", help="also write the measurement as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing JSON file")

    p = sub.add_parser("generate", help="generate images from prompts (optionally with run-time token pruning)")
    add_source_options(p)
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several images)")
    p.add_argument("--out", required=True, metavar="FILE.png",
                   help="image to write (several prompts: one grid, a row per prompt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing image")
    p.add_argument("--steps", type=_positive_int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--resolution", type=_positive_int, help="image side in pixels (default: the model's own)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cpu)")
    _add_tokens(p)

    p = sub.add_parser("eval", help="evaluate a pipeline: shapes (exact), fidelity, clip, pickscore, fid")
    add_source_options(p)
    p.add_argument("--suite", default="shapes", choices=["shapes", "fidelity", "clip", "pickscore", "fid"])
    p.add_argument("--prompts", type=_positive_int, metavar="N", help="evaluate the first N prompts only")
    p.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (not for the shapes suite)")
    p.add_argument("--split", choices=["heldout", "train"], default="heldout",
                   help="shapes prompts: held-out combinations (default) or the training split")
    p.add_argument("--seed", type=int, default=0, help="shifts every prompt's seed (default 0)")
    add_generation_options(p)
    p.add_argument("--reference", metavar="SOURCE", help="fidelity: the uncompressed pipeline (default: shapes)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cpu)")
    _add_tokens(p)
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--report", metavar="DIR", help="write a report folder (metrics, image grids, per prompt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder or JSON file")

    from diffprune.cli_weights import add_weight_commands

    add_weight_commands(sub, add_source_options, _positive_int, add_generation_options)

    from diffprune.cli_layers import add_layer_commands

    add_layer_commands(sub, add_source_options, _positive_int)

    from diffprune.cli_compress import add_compress_command

    add_compress_command(sub, add_source_options, _positive_int)

    p = sub.add_parser("demo", help="load the shapes testbed, measure it, generate and evaluate, write a report")
    p.add_argument("--out", default="diffprune-demo", help="report folder (default: ./diffprune-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument("--source", default=None, help="pipeline to run instead of the bundled default")
    p.add_argument("--steps", type=_positive_int, default=None, help="denoising steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt list (default 0)")
    return parser


def _fmt_count(n) -> str:
    return "n/a" if n is None else f"{n:,}"


def _print_params(params) -> None:
    print(f"  {'component':<16}{'class':<30}{'params':>16}{'non-zero':>16}  dtype")
    for name, c in params.components.items():
        print(f"  {name:<16}{c.class_name:<30}{c.params:>16,}{_fmt_count(c.nonzero):>16}  {c.dtype}")


def _cmd_info(args) -> int:
    from torch import nn

    from diffprune.archs.family import detect_family
    from diffprune.measure import count_params, default_resolution, disk_usage

    obj = load_source(args, device="meta" if args.source.startswith("random:") else None)
    if isinstance(obj, nn.Module) and type(obj).__name__ != "UNet2DConditionModel":
        print(f"{args.source}: a {type(obj).__name__} component")
    else:
        family = detect_family(obj)
        kind = "a bare U-Net" if isinstance(obj, nn.Module) else type(obj).__name__
        scheduler = getattr(obj, "scheduler", None)
        print(f"{args.source}: {family.label} ({kind}), native resolution {default_resolution(obj)}px"
              + (f", scheduler {type(scheduler).__name__}" if scheduler is not None else ""))
    _print_params(count_params(obj))
    path = Path(args.source).expanduser()
    if path.is_dir():
        usage = disk_usage(path)
        parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in usage.components.items())
        print(f"  on disk: {usage.total_bytes / 2**20:.1f} MiB ({parts})")
    for step in (getattr(obj, "_diffprune", None) or {}).get("history", []):
        print(f"  history: {json.dumps(step)}")
    return 0


def _cmd_measure(args) -> int:
    from diffprune._fs import atomic_write_text, check_outputs
    from diffprune.io import input_folder
    from diffprune.measure import measure_pipeline
    from diffprune.report import to_jsonable

    # validated before the (possibly long) load, so a bad path costs nothing
    check_outputs(files={"--json": args.json}, overwrite=args.overwrite, protect=input_paths(args))
    token_config = _token_config(args)
    device = args.device
    if device is None and args.source.startswith("random:") and not args.latency:
        device = "meta"
    pipe = load_source(args, device=device)
    if token_config is not None:
        from diffprune import tokens

        tokens.apply(pipe, token_config)
    m = measure_pipeline(pipe, resolution=args.resolution, batch=args.batch, latency_repeats=args.latency or 0,
                         source=args.source, steps=args.steps)
    print(f"{args.source}: {m.family} at {m.resolution}x{m.resolution}, batch {m.batch}"
          + (f", tokens {m.tokens}" if m.tokens else ""))
    _print_params(m.params)
    print("  FLOPs per call (attention included):")
    per = (f", mean over the {len(m.unet_tflops_per_step)} U-Net calls of a {m.steps}-step schedule"
           if m.steps else "")
    print(f"    unet           {m.unet_flops.tflops:10.4f} TFLOPs  (attention {m.unet_flops.attention / 1e12:.4f}{per})")
    for name, f in m.text_encoder_flops.items():
        print(f"    {name:<15}{f.tflops:10.4f} TFLOPs")
    if m.vae_decode_flops is not None:
        print(f"    vae decode     {m.vae_decode_flops.tflops:10.4f} TFLOPs")
    if m.unet_latency:
        lat = m.unet_latency
        print(f"  U-Net latency: median {lat.median_s * 1000:.1f} ms over {lat.repeats} calls on {lat.device}")
    if args.json:
        atomic_write_text(args.json, json.dumps(to_jsonable(m.to_json()), indent=2) + "\n",
                          overwrite=args.overwrite, protect=[*input_paths(args), input_folder(pipe)])
        print(f"  wrote {args.json}")
    return 0


def _cmd_generate(args) -> int:
    import time

    import torch

    from diffprune._fs import atomic_write_bytes, check_outputs
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
    token_config = _token_config(args)
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
                      height=side, width=side, generator=generators, output_type="pt").images
    seconds = time.perf_counter() - start
    png = image_grid_png(to_pil(images), columns=len(args.prompt) if len(args.prompt) <= 8 else 8)
    atomic_write_bytes(out, png, overwrite=args.overwrite, protect=[*input_paths(args), input_folder(pipe)])
    print(f"{args.source}: {len(args.prompt)} image(s) at {side}x{side}, {args.steps} steps, {seconds:.1f} s"
          + (f", tokens {token_config.spec()}" if token_config else "") + f"; wrote {out}")
    return 0


def _cmd_demo(args) -> int:
    from diffprune.demo import DemoConfig, run_demo

    config = DemoConfig(seed=args.seed)
    if args.source:
        config.source = args.source
    if args.steps:
        config.steps = args.steps
    result = run_demo(args.out, config, overwrite=args.overwrite)
    s = result.summary
    print(f"demo: {s['source']} ({s['family']}), {s['total_params']:,} parameters, "
          f"{s['unet_tflops'] * 1e3:.3f} GFLOPs per U-Net call, {s['gflops_per_image']:.3f} GFLOPs per image")
    if "accuracy_all" in s:
        print(f"quality on held-out shapes prompts: all attributes right {s['accuracy_all']:.0%}, FD {s['fd']:.3g}")
    print(f"report: {result.report_dir / 'report.md'}")
    return 0


def _cmd_eval(args) -> int:
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
    token_config = _token_config(args)
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


def _cmd_layers(args) -> int:
    from diffprune.cli_layers import run_layer_command

    return run_layer_command(args)


def _cmd_compress(args) -> int:
    from diffprune.cli_compress import run_compress_command

    return run_compress_command(args)


def _cmd_weights(args) -> int:
    from diffprune.cli_weights import run_weight_command

    return run_weight_command(args)


_COMMANDS = {"info": _cmd_info, "measure": _cmd_measure, "eval": _cmd_eval, "demo": _cmd_demo,
             "generate": _cmd_generate, "prune-layers": _cmd_layers, "compress": _cmd_compress,
             "prune-weights": _cmd_weights, "sweep": _cmd_weights, "search": _cmd_weights}


def _quiet_libraries() -> None:
    # Library warnings (e.g. optional torchvision) and the libraries' own loading bars would bury the CLI's
    # output and its one-line errors; diffprune shows its own progress on a terminal instead.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    from diffprune.errors import DiffpruneError, first_line

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _quiet_libraries()
        if args.command is None:
            parser.print_help()
            return 2
        return _COMMANDS[args.command](args)
    except (DiffpruneError, _UsageError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not message.startswith("diffprune"):
            message = f"diffprune: error: {message}"
        print(message, file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `diffprune info X | head`: the reader left, nothing to report
        sys.stderr.close()
        return 1
    except OSError as e:
        if e.errno not in _DISK_REFUSALS:
            raise  # anything else is a bug and keeps its traceback
        # the disk said no while writing (full, read-only, permissions); outputs already reported as written stay
        print(f"diffprune: error: the disk refused a write ({e.strerror or first_line(e)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
