"""Token pruning on diffusion transformers: FLOPs over a schedule, wall clock against the FLOPs-ideal speed-up, and
quality on the shapes-dit testbed at equal FLOPs.

    python benchmarks/tokens_dit.py flops [--archs pixart-sigma flux-dev] [--resolution 1024] [--steps 20] [--specs ...]
    python benchmarks/tokens_dit.py speed [--arch pixart-sigma] [--resolution 512] [--repeats 3]
    python benchmarks/tokens_dit.py quality [--ratio 0.5] [--prompts 100] [--cache-threshold 0.2] [--source nearest]
    python benchmarks/tokens_dit.py cache [--thresholds 0.05 0.1 0.2 0.3] [--prompts 100]

``flops`` counts on the meta device (exact shapes, no weights): the mean TFLOPs per transformer call over the
schedule, scorer included, for G-WPR (full and strided scorer), random and ToMe, each against the unpruned model.
``speed`` builds the transformer with seeded random weights (no text encoder or VAE), and times one call at
t = 500 per variant, interleaved (the order rotates every round), the patch installed outside the timed call;
the FLOPs-ideal speed-up is the FLOPs ratio of the same call. ``quality`` runs the shapes suite on the
``shapes-dit`` testbed: G-WPR at ``--ratio``, then random and ToMe at the ratio that matches its mean FLOPs,
each also stacked with diffusers' first-block cache (with the share of calls it skipped); ``--source``
sets the copy source of the G-WPR and random variants. ``cache`` sweeps the first-block cache's threshold on
``shapes-dit``: the share of transformer calls whose later blocks it skipped, and the suite's quality.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch

import diffprune
from diffprune import tokens
from diffprune.measure import count_flops, denoiser_inputs

SPECS = ["atedm:ratio={r}", "atedm:ratio={r},scorer=strided", "atedm:ratio={r},dsap=off", "random:ratio={r}",
         "tome:ratio={r}"]


def flops(args) -> None:
    for arch in args.archs:
        pipe = diffprune.load(f"random:{arch}", device="meta")
        base = tokens.schedule_flops(pipe, args.steps, resolution=args.resolution).mean_tflops
        print(f"\nrandom:{arch} at {args.resolution}², batch 1, {args.steps} steps of "
              f"{type(pipe.scheduler).__name__}; TFLOPs = mean per transformer call, scorer included")
        print(f"{'tokens':<48}{'TFLOPs':>10}{'cut':>8}")
        print(f"{'(unpruned)':<48}{base:>10.3f}")
        specs = args.specs or [spec.format(r=ratio) for ratio in args.ratios for spec in SPECS]
        for spec in specs:
            tokens.apply(pipe, tokens.parse_spec(spec))
            mean = tokens.schedule_flops(pipe, args.steps, resolution=args.resolution).mean_tflops
            tokens.remove(pipe)
            print(f"{spec:<48}{mean:>10.3f}{1 - mean / base:>8.1%}", flush=True)


def speed(args) -> None:
    from diffprune import archs
    from diffprune.measure import describe_hardware

    model = archs.build_denoiser(args.arch, seed=0)
    x = denoiser_inputs(model, resolution=args.resolution, text_length=args.text_length)
    specs = ["(unpruned)"] + [s.format(r=args.ratio) for s in SPECS if "dsap" not in s]
    ideal = {}
    base = count_flops(model, **x).total
    for spec in specs[1:]:
        tokens.apply(model, tokens.parse_spec(spec))
        with tokens.at_timestep(model, 500.0):
            ideal[spec] = base / count_flops(model, **x).total
        tokens.remove(model)
    times: dict[str, list[float]] = {s: [] for s in specs}
    with torch.no_grad():
        for round_ in range(args.repeats + 1):  # the first round warms up
            for k in range(len(specs)):
                spec = specs[(round_ + k) % len(specs)]
                if spec != "(unpruned)":
                    tokens.apply(model, tokens.parse_spec(spec))
                start = time.perf_counter()
                model(**x)
                seconds = time.perf_counter() - start
                tokens.remove(model)
                if round_:
                    times[spec].append(seconds)
    hardware = describe_hardware()
    print(f"\n{args.arch} transformer at {args.resolution}², one call at t = 500, batch 1, median of "
          f"{args.repeats} interleaved; {hardware.get('cpu', 'cpu')}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    median = {s: statistics.median(t) for s, t in times.items()}
    print(f"{'tokens':<40}{'seconds':>9}{'speed-up':>10}{'ideal':>8}{'of ideal':>10}")
    for spec in specs:
        up = median["(unpruned)"] / median[spec]
        if spec == "(unpruned)":
            print(f"{spec:<40}{median[spec]:>9.2f}")
        else:
            print(f"{spec:<40}{median[spec]:>9.2f}{up:>9.3f}x{ideal[spec]:>7.3f}x{up / ideal[spec]:>10.2f}")


@contextlib.contextmanager
def first_block_cache(pipe, threshold: float, spec: str | None = None):
    """A copy of ``pipe`` (token pruning ``spec`` installed on it, if given) with diffusers' first-block cache on
    its transformer. Flux's pipeline enters the cache context itself; PixArt's (``shapes-dit``) does not, so the
    copy's transformer runs inside one context, with its cache state reset whenever a call's timestep is higher
    than the last one's (a new sampling run). The copy is dropped afterwards."""
    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache
    from diffusers.models.cache_utils import CacheMixin

    cached = copy.deepcopy(pipe)
    if spec is not None:
        tokens.apply(cached, tokens.parse_spec(spec))
    model = cached.transformer
    apply_first_block_cache(model, FirstBlockCacheConfig(threshold=threshold))
    if isinstance(model, CacheMixin):  # its pipeline sets the context and resets the state itself
        yield cached
        return
    last, open_context = {"t": None}, []

    def enter(module, args, kwargs):
        t = float(kwargs["timestep"].flatten()[0])
        if last["t"] is not None and t > last["t"]:
            HookRegistry.check_if_exists_or_initialize(module).reset_stateful_hooks()
        last["t"] = t
        context = CacheMixin.cache_context(module, "cond")
        context.__enter__()
        open_context.append(context)

    def leave(module, args, output):
        open_context.pop().__exit__(None, None, None)

    model.register_forward_pre_hook(enter, with_kwargs=True)
    model.register_forward_hook(leave)
    yield cached


def _testbed_run(mode: str, prompts: int):
    """The shapes-dit pipeline, the evaluator, the suite and the unpruned run with its readings; ``None`` (and a
    line saying why) when the testbed is not installed."""
    from diffprune.errors import DiffpruneError
    from diffprune.evaluate import ShapesSuiteConfig, run_shapes_suite
    from diffprune.testbed.evaluator import load_evaluator

    try:
        pipe = diffprune.load("shapes-dit")
    except DiffpruneError as error:
        print(f"{mode}: not measured: {error}")
        return None
    pipe.set_progress_bar_config(disable=True)
    evaluator = load_evaluator()
    suite = ShapesSuiteConfig(prompts=prompts, progress=False)
    dense = run_shapes_suite(pipe, suite, evaluator)
    return pipe, evaluator, suite, dense, evaluator.read(dense.images)


def quality(args) -> None:
    from diffprune.evaluate import reading_agreement, run_shapes_suite

    setup = _testbed_run("quality", args.prompts)
    if setup is None:
        return
    pipe, evaluator, suite, dense, readings = setup
    steps = suite.steps
    resolution = pipe.vae_scale_factor * pipe.transformer.config.sample_size
    base = tokens.schedule_flops(pipe, steps, resolution=resolution)
    source = "" if args.source == "attention" else f",source={args.source}"
    gwpr = tokens.parse_spec(f"atedm:ratio={args.ratio}{source}")
    tokens.apply(pipe, gwpr)
    target = tokens.schedule_flops(pipe, steps, resolution=resolution).mean_tflops
    tokens.remove(pipe)
    variants = {"atedm": gwpr}
    for method in ("random", "tome"):
        config = tokens.parse_spec(f"{method}:ratio={args.ratio}" + (source if method == "random" else ""))
        ratio, _ = tokens.ratio_for_flops(pipe, config, target, steps, resolution=resolution)
        variants[method] = tokens.with_ratio(config, round(ratio, 4))
    keys = ("accuracy_all", "accuracy_color", "accuracy_shape", "accuracy_position", "accuracy_count", "fd")
    print(f"\nshapes-dit, {args.prompts} held-out prompts, {steps} steps; FLOPs matched to {gwpr.spec()} "
          f"({target / base.mean_tflops:.3f} of the unpruned transformer)")
    print("skipped: share of transformer calls whose later blocks the cache skipped")
    print(f"{'variant':<52}" + "".join(f"{k.replace('accuracy_', ''):>10}" for k in keys) + f"{'agree':>8}"
          + f"{'skipped':>9}")

    def row(label, result, skipped=0.0):
        metrics = result.metrics
        agree = reading_agreement(evaluator.read(result.images), readings)["agreement_all"]
        print(f"{label:<52}" + "".join(f"{metrics[k]:>10.3f}" for k in keys) + f"{agree:>8.3f}{skipped:>9.3f}",
              flush=True)

    def cached_row(label, spec=None):
        row(label, *_cached_suite(pipe, args.cache_threshold, suite, evaluator, spec))

    row("(unpruned)", dense)
    cached_row(f"first-block cache {args.cache_threshold}")
    for config in variants.values():
        tokens.apply(pipe, config)
        row(config.spec(), run_shapes_suite(pipe, suite, evaluator))
        tokens.remove(pipe)
        cached_row(config.spec() + " + first-block cache", config.spec())


def _count_skips(model) -> tuple[dict, list]:
    """Hooks counting the transformer's calls and the calls that computed its last block. The cache replaces the
    cached blocks' forward (their own hooks still run), so what is counted is a module inside the last block."""
    from diffprune.anatomy import dit_blocks

    counts = {"calls": 0, "computed": 0}
    inner = next(iter(list(dit_blocks(model))[-1][1].children()))
    handles = [model.register_forward_pre_hook(lambda *_: counts.__setitem__("calls", counts["calls"] + 1)),
               inner.register_forward_pre_hook(lambda *_: counts.__setitem__("computed", counts["computed"] + 1))]
    return counts, handles


def _cached_suite(pipe, threshold: float, suite, evaluator, spec: str | None = None):
    """The shapes suite on a copy of ``pipe`` with the first-block cache (and token pruning ``spec``): the result
    and the share of transformer calls whose later blocks the cache skipped."""
    from diffprune.evaluate import run_shapes_suite

    with first_block_cache(pipe, threshold, spec) as cached:
        counts, handles = _count_skips(cached.transformer)
        result = run_shapes_suite(cached, suite, evaluator)
        for handle in handles:
            handle.remove()
    return result, 1 - counts["computed"] / max(counts["calls"], 1)


def cache(args) -> None:
    from diffprune.evaluate import reading_agreement

    setup = _testbed_run("cache", args.prompts)
    if setup is None:
        return
    pipe, evaluator, suite, dense, readings = setup
    keys = ("accuracy_all", "accuracy_color", "accuracy_count", "fd")
    print(f"\nshapes-dit, {args.prompts} held-out prompts, {suite.steps} steps; diffusers' first-block cache")
    print(f"{'threshold':<12}{'skipped calls':>15}" + "".join(f"{k.replace('accuracy_', ''):>10}" for k in keys)
          + f"{'agree':>8}")
    print(f"{'(none)':<12}{0.0:>15.3f}" + "".join(f"{dense.metrics[k]:>10.3f}" for k in keys) + f"{1.0:>8.3f}")
    for threshold in args.thresholds:
        result, skipped = _cached_suite(pipe, threshold, suite, evaluator)
        agree = reading_agreement(evaluator.read(result.images), readings)["agreement_all"]
        print(f"{threshold:<12g}{skipped:>15.3f}" + "".join(f"{result.metrics[k]:>10.3f}" for k in keys)
              + f"{agree:>8.3f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("flops")
    f.add_argument("--archs", nargs="+", default=["pixart-sigma", "flux-dev"])
    f.add_argument("--resolution", type=int, default=1024)
    f.add_argument("--steps", type=int, default=20)
    f.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7])
    f.add_argument("--specs", nargs="+", help="specs to count instead of the default set at --ratios")
    s = sub.add_parser("speed")
    s.add_argument("--arch", default="pixart-sigma")
    s.add_argument("--resolution", type=int, default=512)
    s.add_argument("--text-length", type=int, default=120)
    s.add_argument("--ratio", type=float, default=0.5)
    s.add_argument("--repeats", type=int, default=3)
    q = sub.add_parser("quality")
    q.add_argument("--ratio", type=float, default=0.5)
    q.add_argument("--prompts", type=int, default=100)
    q.add_argument("--cache-threshold", type=float, default=0.05)
    q.add_argument("--source", default="attention", choices=tokens.SOURCES,
                   help="copy source of the G-WPR and random variants (default attention)")
    c = sub.add_parser("cache")
    c.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    c.add_argument("--prompts", type=int, default=100)
    args = parser.parse_args(argv)
    {"flops": flops, "speed": speed, "quality": quality, "cache": cache}[args.mode](args)


if __name__ == "__main__":
    main()
