"""End-to-end speed of token pruning and its public peers: whole sampling runs, against the FLOPs-ideal speed-up.

    python benchmarks/tokens_e2e.py [--source shapes] [--prompts 16] [--steps 20] [--repeats 3]
        [--variants "atedm:ratio=0.63" "tomesd:ratio=0.5,max_downsample=2" "deepcache:interval=3" ...]
    python benchmarks/tokens_e2e.py --source random:sd15 --resolution 512 --prompts 1 --steps 4

Every variant generates the same prompts from the same seeds with the same pipeline (one copy of the weights),
its patch installed before the timed run and removed after it. A first run of each variant warms it up (its images
are the ones scored); then each variant is timed ``--repeats`` times, every run next to an unpatched one (order
alternating), and the speed-up is the median of those pairs' ratios, with quartiles: on a shared host identical
runs differ by up to 15 %, and pairs keep a slow spell from counting against one side. FLOPs-ideal: the FLOPs of one
whole pipeline call (text encoder, every denoiser call, VAE decode) of the unpatched pipeline over the variant's,
counted while really running it (so DeepCache's skipped steps and tomesd's merges count as they run). Only the
generation is timed; the images of the first round are scored afterwards. Quality
against the unpatched run: the shapes suite on the testbed (accuracy, FD, reading agreement) and PSNR of the
images (other sources: PSNR only, and with random weights it says nothing about quality). ``tomesd`` and
``DeepCache`` rows need those packages (``pip install diffprune[peers]``); without them
the rows say so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import diffprune
from diffprune.bench.peers import PEERS, apply_variant, available, is_peer, parse_peer, split_variant
from diffprune.evaluate import ShapesSuiteConfig, generate, reading_agreement, shapes_metrics, shapes_prompts
from diffprune.measure import describe_hardware, flop_counter, paired_speedup

VARIANTS = ["atedm:ratio=0.63", "atedm:ratio=0.63,scorer=strided", "atedm:ratio=0.63,scorer=strided,refresh=2",
            "atedm:ratio=0.63,copy=delta", "random:ratio=0.63",
            "tome:ratio=0.5,levels=1",
            "tomesd:ratio=0.5,max_downsample=1", "tome:ratio=0.5,levels=1+2", "tomesd:ratio=0.5,max_downsample=2",
            "deepcache:interval=3", "atedm:ratio=0.63+deepcache:interval=3",
            "atedm:ratio=0.63,scorer=strided,refresh=2+deepcache:interval=3",
            "tome:ratio=0.5,levels=1+deepcache:interval=3"]


def _missing(spec: str) -> str | None:
    for part in split_variant(spec):
        if is_peer(part) and not available(parse_peer(part).name):
            return f"{PEERS[parse_peer(part).name][1]} not installed"
    return None


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="shapes")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--resolution", type=int, default=None, help="image side (default: the pipeline's)")
    args = parser.parse_args(argv)
    pipe = diffprune.load(args.source)
    pipe.set_progress_bar_config(disable=True)
    testbed = args.source == "shapes"
    size = args.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    if testbed:
        from diffprune.testbed.evaluator import load_evaluator

        evaluator = load_evaluator()
        suite = ShapesSuiteConfig(prompts=args.prompts, steps=args.steps, progress=False)
        prompts = shapes_prompts(suite.prompts, suite.seed, suite.split)
    captions = [p.caption for p in shapes_prompts(args.prompts, seed=0)]

    class Generated:  # a run's images; on the testbed, scored after the timed part
        def __init__(self, images):
            self.images, self.metrics, self.readings = images, {}, None

        def score(self):
            if testbed:
                self.metrics, _, self.readings = shapes_metrics(self.images, prompts, evaluator)
            return self

    def sample():  # the timed part: generation only (scoring the images is not what a user waits for)
        if testbed:
            return Generated(generate(pipe, prompts, steps=suite.steps, guidance_scale=suite.guidance_scale,
                                      batch_size=suite.batch_size, progress=False))
        with torch.inference_mode():
            return Generated(pipe(captions, num_inference_steps=args.steps, height=size, width=size,
                                  generator=[torch.Generator().manual_seed(i) for i in range(len(captions))],
                                  output_type="pt").images)
    skipped = {v: _missing(v) for v in args.variants if _missing(v)}
    variants = ["(unpatched)"] + [v for v in args.variants if v not in skipped]

    def run(spec: str):
        remove = (lambda: None) if spec == "(unpatched)" else apply_variant(pipe, spec)
        try:  # the patch goes on and comes off outside the timed part
            start = time.perf_counter()
            result = sample()
            return result, time.perf_counter() - start
        finally:
            remove()

    def pipeline_flops(spec: str) -> int:
        remove = (lambda: None) if spec == "(unpatched)" else apply_variant(pipe, spec)
        try:
            with flop_counter() as counter, torch.inference_mode():
                pipe("a red circle", num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                     height=size, width=size, output_type="pt")
            return counter.get_total_flops()
        finally:
            remove()

    flops = {v: pipeline_flops(v) for v in variants}
    results = {v: run(v)[0].score() for v in variants}  # warms every variant up; its images are scored
    speed, seconds = {"(unpatched)": (1.0, 1.0, 1.0)}, {}
    for spec in variants[1:]:  # pairs timed side by side, the order alternating: (A B), (B A), ...
        pairs: dict[str, list[float]] = {"(unpatched)": [], spec: []}
        for i in range(args.repeats):
            for label in (("(unpatched)", spec) if i % 2 == 0 else (spec, "(unpatched)")):
                pairs[label].append(run(label)[1])
        speed[spec] = paired_speedup(pairs["(unpatched)"], pairs[spec])
        seconds[spec] = statistics.median(pairs[spec])
        seconds.setdefault("(unpatched)", statistics.median(pairs["(unpatched)"]))
    base = results["(unpatched)"]
    print(f"\n{args.source}: {args.prompts} prompts x {args.steps} steps per run; speed-up: median of {args.repeats} "
          f"runs each timed next to an unpatched one [quartiles]; {describe_hardware().get('cpu', 'cpu')}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'variant':<48}{'s':>7}{'speed-up':>9}{'[quartiles]':>14}{'ideal':>7}{'of ideal':>9}{'all':>7}{'FD':>8}"
          f"{'agree':>7}{'PSNR':>7}")
    for spec in variants:
        (up, low, high), ideal = speed[spec], flops["(unpatched)"] / flops[spec]
        m = results[spec].metrics
        nan = float("nan")
        agree = reading_agreement(results[spec].readings, base.readings)["agreement_all"] if testbed else nan
        print(f"{spec:<48}{seconds.get(spec, nan):>7.1f}{up:>8.2f}x  [{low:.2f}-{high:.2f}]{ideal:>6.2f}x"
              f"{up / ideal:>9.2f}{m.get('accuracy_all', nan):>7.2f}{m.get('fd', nan):>8.0f}{agree:>7.2f}"
              f"{_psnr(results[spec].images, base.images):>7.1f}", flush=True)
    for spec, why in skipped.items():
        print(f"{spec:<48}  not run: {why}")


if __name__ == "__main__":
    main()
