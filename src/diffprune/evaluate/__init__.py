"""Evaluation suites: ``shapes`` (exact, on the testbed), ``fidelity`` (against the uncompressed pipeline), and
CLIP score / PickScore / FID from locally provided weights."""

from .fidelity import fidelity_metrics
from .generate import generate
from .prompts import EvalPrompt, file_prompts, shapes_prompts
from .run import SUITES, EvalConfig, EvalResult, check_inputs, evaluate, write_report
from .shapes import ShapesSuiteConfig, run_shapes_suite

__all__ = ["SUITES", "check_inputs", "EvalConfig", "EvalPrompt", "EvalResult", "ShapesSuiteConfig", "evaluate",
           "fidelity_metrics", "file_prompts", "generate", "run_shapes_suite", "shapes_prompts", "write_report"]
