"""``diffprune bench``: the uncompressed baseline and compression recipes measured side by side — cost
(parameters, non-zero parameters, disk, FLOPs per image, latency, memory) and quality — with a report."""

from .config import BenchConfig
from .pareto import pareto_front, plot_pareto
from .report import table_rows, write_bench_report
from .run import BASELINE, BenchResult, VariantResult, check_recipes, run_bench

__all__ = ["BASELINE", "BenchConfig", "BenchResult", "VariantResult", "check_recipes", "pareto_front", "plot_pareto",
           "run_bench", "table_rows", "write_bench_report"]
