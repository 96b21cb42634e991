"""The ``distill`` command: retrain a pruned pipeline's denoiser (U-Net or transformer) against the original.
Parsing and printing only; :mod:`diffprune.distill` does the work. Runs as one process, or under
``accelerate launch`` / ``torchrun`` (``python -m diffprune.cli distill ...``) as several; only the main process
writes.

Outputs: ``--out DIR`` is the distilled pipeline (``diffprune.load`` and stock diffusers open it). The run's
state lives in ``--work DIR`` (default ``<out>-work``): checkpoints, the latent cache, ``log.jsonl`` /
``log.csv`` and ``report/`` with the loss plots. ``--resume latest`` continues from the newest checkpoint there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from diffprune.cli.common import positive_int
from diffprune.cli.source import add_source_options, input_paths, load_source

_MARKER = "diffprune-run.json"


def add_commands(sub) -> None:
    from diffprune.distill.config import FEATURE_KD, FEATURE_SITES, OPTIMIZERS, PRECISIONS, SCHEDULES

    p = sub.add_parser("distill", help="retrain a pruned U-Net or transformer by distillation from the original (accelerate)")
    add_source_options(p)
    p.add_argument("--teacher", required=True, metavar="SOURCE", help="the uncompressed pipeline")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="shapes[:N] (the testbed world, N images, default 20000), an image-caption folder "
                        "(imagefolder + metadata.jsonl, or save_to_disk), or prompts:FILE (the teacher draws)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the distilled pipeline")
    p.add_argument("--work", metavar="DIR", help="run folder: checkpoints, cache, logs, report (default <out>-work)")
    p.add_argument("--resume", metavar="latest|DIR", help="continue from a checkpoint of the work folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output and work folder")
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=32, help="global batch per optimiser step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--schedule", choices=SCHEDULES, default="constant")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--gradient-accumulation", type=positive_int, default=1)
    p.add_argument("--mixed-precision", choices=PRECISIONS, default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--ema-decay", type=float, help="keep an EMA of the student (e.g. 0.999) and save it")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--lambda-task", type=float, default=1.0)
    p.add_argument("--lambda-out", type=float, default=1.0)
    p.add_argument("--lambda-feat", type=float, default=1.0)
    p.add_argument("--feature-kd", choices=FEATURE_KD, default="normalized")
    p.add_argument("--norm-power", type=int, choices=[1, 2], default=2)
    p.add_argument("--features", choices=FEATURE_SITES, default="stages")
    p.add_argument("--teacher-dtype", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--checkpoint-every", type=positive_int, metavar="N")
    p.add_argument("--checkpoints-total-limit", type=positive_int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=positive_int, help="image-caption folders: crop size (default native)")
    p.add_argument("--caption-column", help="image-caption folders: the caption column (default text/caption)")
    p.add_argument("--quick", action="store_true", help="a few steps on a little data: check the set-up")


def _config(args):
    from diffprune.distill import DistillConfig

    steps, batch = (3, 4) if args.quick else (args.steps, args.batch_size)
    return DistillConfig(steps=steps, batch_size=batch, lr=args.lr, schedule=args.schedule,
                         warmup_steps=args.warmup_steps, gradient_accumulation=args.gradient_accumulation,
                         mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                         ema_decay=args.ema_decay, optimizer=args.optimizer, lambda_task=args.lambda_task,
                         lambda_out=args.lambda_out, lambda_feat=args.lambda_feat, feature_kd=args.feature_kd,
                         norm_power=args.norm_power, features=args.features, teacher_dtype=args.teacher_dtype,
                         checkpoint_every=args.checkpoint_every, checkpoints_total_limit=args.checkpoints_total_limit,
                         seed=args.seed)


def _work_folder(args) -> tuple[Path, bool]:
    """The run folder, checked (new, or one this command made: resumed, or replaced with --overwrite), and
    whether an earlier run in it is to be cleared once every other check has passed."""
    from diffprune.errors import DiffpruneError

    work = Path(args.work or f"{str(args.out).rstrip('/')}-work").expanduser()
    if work.exists() and any(work.iterdir()):
        if not (work / _MARKER).is_file():
            raise DiffpruneError(f"{work} exists and is not a diffprune distillation run folder; choose another --work")
        if not args.resume and not args.overwrite:
            raise DiffpruneError(f"{work} holds an earlier run: --resume latest to continue it, --overwrite to start over")
        earlier = json.loads((work / _MARKER).read_text()).get("data")
        if args.resume and earlier != args.data:
            raise DiffpruneError(f"{work} was trained on --data {earlier}; resume it with the same data")
        return work, bool(args.overwrite and not args.resume)
    if args.resume:
        raise DiffpruneError(f"nothing to resume: {work} holds no run")
    return work, False


def _data(args, teacher, work: Path, quick: bool):
    from diffprune.distill import DistillData, data_from_spec

    cache = work / "latents.safetensors"
    if cache.is_file():
        return DistillData.load(cache)
    return data_from_spec(args.data, teacher, seed=args.seed, limit=64 if quick else None,
                          resolution=args.resolution, caption_column=args.caption_column)


def run(args) -> int:
    from accelerate import PartialState

    from diffprune import save
    from diffprune._fs import check_outputs
    from diffprune.distill import DistillData, check_run, distill, feature_spread, plot_terms
    from diffprune.report import Report

    from diffprune.distill import check_data_spec

    config = _config(args)  # every option checked before anything is loaded
    check_data_spec(args.data)
    inputs = input_paths(args) + [p for p in [args.teacher] if p]
    import torch

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes join over gloo
    work, clear = _work_folder(args)
    check_outputs({"--out": args.out}, overwrite=args.overwrite, protect=[*inputs, str(work)])
    state.wait_for_everyone()  # every rank has checked the folder before it is cleared
    if clear and state.is_main_process:
        import shutil

        shutil.rmtree(work)
    student, teacher = load_source(args), load_source(args, args.teacher)  # the same dtype and checks
    check_run(student, teacher, config)  # a refused pair leaves no run folder behind
    if state.is_main_process:  # the main process builds the data once; the others read its cache
        data = _data(args, teacher, work, args.quick)
        work.mkdir(parents=True, exist_ok=True)
        (work / _MARKER).write_text(json.dumps({"student": args.source, "teacher": args.teacher, "data": args.data}))
        data.save(work / "latents.safetensors")
    state.wait_for_everyone()
    if not state.is_main_process:
        data = DistillData.load(work / "latents.safetensors")
    result = distill(student, teacher, data, config, work_dir=work, resume=args.resume,
                     progress=sys.stderr.isatty())
    if state.is_main_process:
        out = save(student, args.out, overwrite=args.overwrite)
        keys = sorted({k for e in result.log for k in e})
        (work / "log.csv").write_text(",".join(keys) + "\n" + "".join(
            ",".join(str(e.get(k, "")) for k in keys) + "\n" for e in result.log))
        report = Report(work / "report", title=f"diffprune distill: {args.source}", overwrite=True)
        report.text(f"Student `{args.source}`, teacher `{args.teacher}`, data `{data.source}` ({len(data)} "
                    f"samples); {config.steps} steps of {config.batch_size}, feature KD `{config.feature_kd}` at "
                    f"{len(result.sites)} {config.features}.", heading="What was run")
        report.figure("losses", plot_terms(result.log, title=f"({config.feature_kd})"), heading="Loss terms")
        spread = feature_spread(result.log)
        if spread:
            report.text(f"Spread of the per-site feature terms (log10 of largest / smallest): first logged step "
                        f"{spread[0]:.2f}, last {spread[-1]:.2f}.")
        report.metrics("log", result.log)
        report.write()
        print(f"{args.source}: distilled for {config.steps} steps; saved to {out}")
        print(f"  {result.summary()}")
        print(f"  log and report: {work}")
    state.wait_for_everyone()
    return 0
