"""Hansen's Figure 1: the likelihood ratio LR(gamma) of the threshold over the candidates, with the critical value.

PNG and SVG with matplotlib's object API, as analytics/did_chart.py draws the event study. One panel
per threshold estimate (single; with the double model also the refined first and the second).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from analytics.did_chart import _save
from analytics.panel import ThresholdResult

LR_COLOR, CRIT_COLOR = "#1f5f8b", "#b5651d"


def lr_chart(result: ThresholdResult, stem: Path, *, title: str | None = None) -> list[Path]:
    """LR(gamma) against gamma for every threshold estimate, the 95 % critical value c(alpha) as a dashed line and
    the estimate marked; writes `stem`.png and `stem`.svg and returns their paths."""
    import matplotlib

    s = result.settings
    crit = float(s["c_alpha"])
    estimates = result.thresholds
    with matplotlib.rc_context({"svg.hashsalt": "village", "axes.unicode_minus": False}):
        fig = Figure(figsize=(7.5, 3.2 * len(estimates)))
        axes = fig.subplots(len(estimates), 1, squeeze=False)[:, 0]
        for ax, est in zip(axes, estimates, strict=True):
            lr = np.where(np.isfinite(est.lr), est.lr, np.nan)
            ax.plot(est.grid, lr, color=LR_COLOR, linewidth=1.1, label="LR(γ)")
            ax.axhline(crit, color=CRIT_COLOR, linestyle="--", linewidth=0.9, label=f"c(α) = {crit:.2f}")
            ax.axvline(est.estimate, color="grey", linewidth=0.8)
            ax.axvspan(est.ci_lower, est.ci_upper, color=CRIT_COLOR, alpha=0.12, label="confidence set")
            ax.set_title(f"{est.name}: γ̂ = {est.estimate:.4g} [{est.ci_lower:.4g}, {est.ci_upper:.4g}]", fontsize=10)
            ax.set_xlabel(f"threshold γ ({result.q})")
            ax.set_ylabel("LR(γ)")
            top = np.nanmax(lr) if np.isfinite(lr).any() else crit
            ax.set_ylim(0, max(min(float(top), 6 * crit), 1.5 * crit))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper right", frameon=False)
        fig.suptitle(title or f"Threshold likelihood ratio: {result.y} on {', '.join(result.x)}", fontsize=11)
        fig.text(
            0.01,
            -0.01,
            f"{s['grid_points']} candidates; {s['specification']}; s² = {s['sigma2_formula']} ({s['sigma2']}); "
            "LR(γ) = (S1(γ) - S1(γ̂)) / s² (Hansen 1999, Figure 1)",
            fontsize=7,
            color="grey",
        )
        fig.tight_layout()
        return _save(fig, stem)
