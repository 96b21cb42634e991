"""Retraining layer-pruned testbeds by distillation: recovery, the loss ablation, and LAPTOP against BK-SDM.

    python benchmarks/distill_testbed.py --work runs/distill [--steps 600] [--recovery-steps 2000] [--seeds 0 1]
        [--prompts 100] [--ablation-student bk-small|output-loss] [--out report-folder]

Students: the testbed's U-Net with 50 % of its parameters removed by the output-loss criterion (one shot), and
BK-SDM's handcrafted ``bk-small``. Every run retrains from the same student with the same steps, batch and
learning rate; the seed sets the data order and noise. Variants:

- the loss ablation on ``--ablation-student``: ``task``: the denoising loss only; ``+out``: and output KD;
  ``+plain``: and BK-SDM's feature KD; ``+norm``: and LAPTOP's normalized feature KD (each at every seed). The
  default student is ``bk-small``, which one-shot removal breaks: on the committed testbed, the one-shot
  output-loss student already draws as well as the dense model, so there is little for a loss to recover;
- ``output-loss +norm`` and ``bk-small +norm`` (seed 0): LAPTOP's student against the handcrafted one, retrained
  identically;
- ``output-loss +norm long``: the recovery run, ``--recovery-steps`` steps (about 40 minutes on 2 CPU cores).

Each variant is scored by the shapes suite on held-out prompts, with reading agreement against the dense
testbed. Runs are resumable: finished ones are kept in ``--work`` (``<variant>/result.json``), unfinished ones
continue from their last checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import diffprune
from diffprune import layers
from diffprune.distill import DistillConfig, DistillData, distill, feature_spread, plot_terms, shapes_data
from diffprune.evaluate import ShapesSuiteConfig, reading_agreement, run_shapes_suite
from diffprune.testbed.evaluator import load_evaluator

LOSSES = {"task": dict(lambda_out=0.0, feature_kd="none"), "+out": dict(feature_kd="none"),
          "+plain": dict(feature_kd="plain"), "+norm": dict(feature_kd="normalized")}


def _student(teacher, kind: str):
    student = copy.deepcopy(teacher)
    if kind == "bk-small":
        layers.apply_preset(student, "bk-small")
    else:
        layers.prune(student, layers.LayerPruningConfig(ratio=0.5, criterion="output-loss"))
    return student


def _score(pipe, suite, evaluator, dense_readings) -> dict:
    result = run_shapes_suite(pipe, suite, evaluator)
    metrics = {k: v for k, v in result.metrics.items() if k.startswith("accuracy_") or k == "fd"}
    metrics.update(reading_agreement(evaluator.read(result.images), dense_readings))
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for runs, checkpoints and results (resumable)")
    parser.add_argument("--steps", type=int, default=600, help="steps of every ablation run")
    parser.add_argument("--recovery-steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--images", type=int, default=20_000, help="shapes-world training renders")
    parser.add_argument("--ablation-student", default="bk-small", choices=["bk-small", "output-loss"],
                        help="the student of the loss ablation (default bk-small: it needs retraining; the one-shot "
                             "output-loss student may already be close to the dense model)")
    parser.add_argument("--out", default=None, help="also write a report with the loss plots")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = diffprune.load("shapes")
    teacher.set_progress_bar_config(disable=True)
    evaluator = load_evaluator()
    suite = ShapesSuiteConfig(prompts=args.prompts, progress=False)
    dense_run = run_shapes_suite(teacher, suite, evaluator)
    dense_readings = evaluator.read(dense_run.images)
    dense = {k: v for k, v in dense_run.metrics.items() if k.startswith("accuracy_") or k == "fd"}
    cache = work / "latents.safetensors"
    data = DistillData.load(cache) if cache.is_file() else shapes_data(teacher, n=args.images, seed=1234)
    data.save(cache)
    ab = args.ablation_student
    runs = [(f"{ab} {name} seed {seed}", ab, name, seed, args.steps) for seed in args.seeds for name in LOSSES]
    for kind in ("output-loss", "bk-small"):  # LAPTOP against the handcrafted student, retrained identically
        if (f"{kind} +norm seed 0", kind, "+norm", 0, args.steps) not in runs:
            runs.append((f"{kind} +norm seed 0", kind, "+norm", 0, args.steps))
    runs.append(("output-loss +norm long", "output-loss", "+norm", 0, args.recovery_steps))
    rows = {"dense": dense}
    logs = {}
    students = {kind: _student(teacher, kind) for kind in ("output-loss", "bk-small")}  # pruned once, copied per run
    for label, student in students.items():  # one-shot, before retraining
        rows[f"{label} one-shot"] = _score(student, suite, evaluator, dense_readings)
    for label, kind, losses, seed, steps in runs:
        folder = work / label.replace(" ", "_").replace("+", "")
        done = folder / "result.json"
        if done.is_file():
            saved = json.loads(done.read_text())
            rows[label], logs[label] = saved["metrics"], saved["log"]
            continue
        config = DistillConfig(steps=steps, batch_size=args.batch, lr=args.lr, seed=seed,
                               checkpoint_every=max(1, steps // 6), log_every=10, **LOSSES[losses])
        student = copy.deepcopy(students[kind])
        resume = "latest" if any(folder.glob("checkpoints/checkpoint-*/diffprune-step.json")) else None
        result = distill(student, teacher, data, config, work_dir=folder, resume=resume)
        rows[label], logs[label] = _score(student, suite, evaluator, dense_readings), result.log
        done.write_text(json.dumps({"metrics": rows[label], "log": result.log, "seconds": result.seconds}))
        print(f"{label}: all {rows[label]['accuracy_all']:.3f}", flush=True)

    keys = ("accuracy_all", "accuracy_color", "accuracy_shape", "accuracy_size", "accuracy_position",
            "accuracy_count", "agreement_all", "fd")
    print(f"\nshapes suite, {args.prompts} held-out prompts; retraining: {args.steps} steps of {args.batch} "
          f"({args.recovery_steps} for the long run), lr {args.lr}, {len(data)} training renders")
    print(f"{'variant':<30}" + "".join(f"{k.replace('accuracy_', ''):>14}" for k in keys))
    for label, m in rows.items():
        print(f"{label:<30}" + "".join(f"{m.get(k, float('nan')):>14.3f}" for k in keys))
    print(f"\nablation ({ab} student), mean over seeds of accuracy_all:")
    for name in LOSSES:
        values = [rows[f"{ab} {name} seed {s}"]["accuracy_all"] for s in args.seeds]
        print(f"  {name:<8} {sum(values) / len(values):.3f}  ({', '.join(f'{v:.3f}' for v in values)})")
    for label in ("output-loss +norm seed 0", "bk-small +norm seed 0"):
        if dense["accuracy_all"]:
            decline = 1 - rows[label]["accuracy_all"] / dense["accuracy_all"]
            print(f"  relative decline of {label} against the dense testbed: {decline:.1%}")
    for label in (f"{ab} +plain seed {args.seeds[0]}", f"{ab} +norm seed {args.seeds[0]}"):
        spread = feature_spread(logs[label])
        print(f"  feature-term spread (log10 max/min) of {label}: first {spread[0]:.2f}, last {spread[-1]:.2f}")
    if args.out:
        from diffprune.report import Report

        report = Report(args.out, title="Distillation on the shapes testbed", overwrite=True)
        report.table([{"variant": k, **{c: m.get(c) for c in keys}} for k, m in rows.items()], heading="Quality")
        for label in (f"{ab} +plain seed {args.seeds[0]}", f"{ab} +norm seed {args.seeds[0]}"):
            report.figure(label.replace(" ", "_").replace("+", ""), plot_terms(logs[label], title=label),
                          heading=f"Loss terms: {label}")
        print(f"report: {report.write()}")


if __name__ == "__main__":
    main()
