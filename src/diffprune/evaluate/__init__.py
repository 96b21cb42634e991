"""Evaluation suites: ``shapes`` (exact, on the testbed), ``fidelity`` (against the uncompressed pipeline), and
CLIP score / PickScore / FID from locally provided weights."""

from .fidelity import fidelity_metrics, reading_agreement
from .generate import generate, image_size, to_pil
from .prompts import EvalPrompt, file_prompts, shapes_prompts
from .run import SUITES, EvalConfig, EvalResult, check_inputs, evaluate, external_scorer, feature_fn, write_report
from .shapes import ShapesSuiteConfig, run_shapes_suite, score_images, shapes_metrics, summarize

__all__ = ["SUITES", "check_inputs", "EvalConfig", "EvalPrompt", "EvalResult", "ShapesSuiteConfig", "evaluate",
           "external_scorer", "feature_fn", "fidelity_metrics", "file_prompts", "generate", "image_size", "reading_agreement", "to_pil",
           "run_shapes_suite", "score_images", "shapes_metrics", "shapes_prompts", "summarize", "write_report"]
