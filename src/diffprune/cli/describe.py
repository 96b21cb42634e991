"""The ``info`` and ``measure`` commands: what a model is, and what it costs."""

from __future__ import annotations

import json
from pathlib import Path

from diffprune.cli.common import add_tokens, parse_tokens_option, positive_int
from diffprune.cli.source import add_source_options, input_paths, load_source


def add_commands(sub) -> None:
    p = sub.add_parser("info", help="describe a model: family, components, parameters, files")
    add_source_options(p)

    p = sub.add_parser("measure", help="parameters, FLOPs per call (attention included), optional latency")
    add_source_options(p)
    p.add_argument("--resolution", type=positive_int, help="image side in pixels (default: the model's own)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size of each call (default 1)")
    p.add_argument("--latency", type=positive_int, metavar="N",
                   help="also time N denoiser calls (median; needs real weights, slow for big models)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda[:i] or meta (random:<arch> defaults to meta: no memory, no non-zero counts)")
    add_tokens(p)
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help="report denoiser FLOPs as the mean over an N-step schedule (default with --tokens: 20)")
    p.add_argument("--json", metavar="FILE", help="also write the measurement as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing JSON file")


def _fmt_count(n) -> str:
    return "n/a" if n is None else f"{n:,}"


def _print_params(params) -> None:
    print(f"  {'component':<16}{'class':<30}{'params':>16}{'non-zero':>16}  dtype")
    for name, c in params.components.items():
        print(f"  {name:<16}{c.class_name:<30}{c.params:>16,}{_fmt_count(c.nonzero):>16}  {c.dtype}")


def _print_roles(obj) -> None:
    """A transformer's parameters by role: AdaLN modulation holds many and costs almost no FLOPs per call
    (``measure`` gives the FLOPs side)."""
    from diffprune.anatomy import denoiser_of, is_transformer
    from diffprune.measure import parameter_roles

    model = denoiser_of(obj)
    if not is_transformer(model):
        return
    roles = parameter_roles(model)
    total = sum(roles.values()) or 1
    print("  transformer parameters by role (`measure` adds each role's share of FLOPs):")
    for role, n in roles.items():
        if n:
            print(f"    {role:<15}{n:>15,}  {n / total:7.1%}")


def run_info(args) -> int:
    from diffprune.anatomy import is_denoiser, is_module, is_unet
    from diffprune.archs.family import detect_family
    from diffprune.measure import count_params, default_resolution, disk_usage

    obj = load_source(args, device="meta" if args.source.startswith("random:") else None)
    if is_module(obj) and not is_denoiser(obj):
        print(f"{args.source}: a {type(obj).__name__} component")
    else:
        family = detect_family(obj)
        kind = (("a bare U-Net" if is_unet(obj) else f"a bare {type(obj).__name__}") if is_module(obj)
                else type(obj).__name__)
        scheduler = getattr(obj, "scheduler", None)
        print(f"{args.source}: {family.label} ({kind}), native resolution {default_resolution(obj)}px"
              + (f", scheduler {type(scheduler).__name__}" if scheduler is not None else ""))
    _print_params(count_params(obj))
    if not is_module(obj) or is_denoiser(obj):
        _print_roles(obj)
    path = Path(args.source).expanduser()
    if path.is_dir():
        usage = disk_usage(path)
        parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in usage.components.items())
        print(f"  on disk: {usage.total_bytes / 2**20:.1f} MiB ({parts})")
    for step in (getattr(obj, "_diffprune", None) or {}).get("history", []):
        print(f"  history: {json.dumps(step)}")
    return 0


def run_measure(args) -> int:
    from diffprune._fs import atomic_write_text, check_outputs
    from diffprune.io import input_folder
    from diffprune.measure import measure_pipeline
    from diffprune.report import to_jsonable

    # validated before the (possibly long) load, so a bad path costs nothing
    check_outputs(files={"--json": args.json}, overwrite=args.overwrite, protect=input_paths(args))
    token_config = parse_tokens_option(args)
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
    d = m.denoiser
    label = "U-Net" if d == "unet" else "transformer"
    per = (f", mean over the {len(m.denoiser_tflops_per_step)} {label} calls of a {m.steps}-step schedule"
           if m.steps else "")
    f = m.denoiser_flops
    print(f"    {d:<15}{f.tflops:10.4f} TFLOPs  (attention {f.attention / 1e12:.4f}{per})")
    for name, f in m.text_encoder_flops.items():
        print(f"    {name:<15}{f.tflops:10.4f} TFLOPs")
    if m.vae_decode_flops is not None:
        print(f"    vae decode     {m.vae_decode_flops.tflops:10.4f} TFLOPs")
    if m.groups:
        print(f"  {d} by role (share of parameters / of FLOPs per call):")
        for role, g in m.groups.items():
            if g["params"] or g["flops"]:
                print(f"    {role:<15}{g['params']:>15,} params  {g['param_share']:7.1%}  {g['flop_share']:7.1%}")
    if m.denoiser_latency:
        lat = m.denoiser_latency
        print(f"  {label} latency: median {lat.median_s * 1000:.1f} ms over {lat.repeats} calls on {lat.device}")
    if args.json:
        atomic_write_text(args.json, json.dumps(to_jsonable(m.to_json()), indent=2) + "\n",
                          overwrite=args.overwrite, protect=[*input_paths(args), input_folder(pipe)])
        print(f"  wrote {args.json}")
    return 0
