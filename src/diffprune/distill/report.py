"""What a distillation run shows: every loss term over training, and the per-site feature terms on a log scale —
the evidence of the imbalance that normalized feature KD removes (a few sites dominate plain feature KD)."""

from __future__ import annotations

import math


def feature_spread(log: list[dict]) -> list[float]:
    """Per logged step: log10 of the largest over the smallest per-site feature term (0: all equal)."""
    out = []
    for entry in log:
        terms = [v for k, v in entry.items() if k.startswith("feat/") and v > 0]
        out.append(math.log10(max(terms) / min(terms)) if len(terms) > 1 else 0.0)
    return out


def plot_terms(log: list[dict], *, title: str = ""):
    """Two panels: task / output KD / total over steps, and each feature site's term (log scale)."""
    from matplotlib.figure import Figure

    steps = [e["step"] for e in log]
    fig = Figure(figsize=(11, 3.8), dpi=110)
    ax = fig.add_subplot(1, 2, 1)
    for key in ("loss", "task", "output_kd"):
        ax.plot(steps, [e[key] for e in log], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax.set_title("loss terms", fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    sites = [k for k in (log[0] if log else {}) if k.startswith("feat/")]
    for key in sites:
        ax.plot(steps, [max(e[key], 1e-12) for e in log], label=key[5:], lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"feature KD per site {title}".strip(), fontsize=9)
    if sites:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig
