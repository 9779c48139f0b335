"""The event-study chart of a staggered DID: ATT(e) with pointwise intervals and the uniform band, TWFE beside it.

PNG and SVG with matplotlib's object API, as analytics/charts.py draws the indicator charts.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from analytics.did import DidResult

FORMATS = ("png", "svg")
CS_COLOR, BAND_COLOR, TWFE_COLOR = "#1f5f8b", "#9bb7cc", "#b5651d"


def _save(fig: Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, format=fmt, dpi=150, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    return paths


def event_study_chart(result: DidResult, stem: Path, *, title: str | None = None, twfe: bool = True) -> list[Path]:
    """ATT by event time: points, pointwise CIs as error bars, the uniform band shaded; TWFE's event-study
    coefficients as open markers. Writes `stem`.png and `stem`.svg and returns their paths."""
    import matplotlib

    es = result.dynamic
    e = [int(x.labels["e"]) for x in es]
    lvl = f"{100 * (1 - result.alpha):g} %"
    with matplotlib.rc_context({"svg.hashsalt": "village", "axes.unicode_minus": False}):
        fig = Figure(figsize=(7.5, 4.2))
        ax = fig.add_subplot()
        ax.fill_between(
            e,
            [x.band_lower for x in es],  # type: ignore[misc]
            [x.band_upper for x in es],  # type: ignore[misc]
            color=BAND_COLOR,
            alpha=0.45,
            step=None,
            label=f"uniform {lvl} band (sup-t {result.band_critical:.2f})",
        )
        ax.errorbar(
            e,
            [x.att for x in es],
            yerr=[[x.att - x.ci_lower for x in es], [x.ci_upper - x.att for x in es]],
            fmt="o",
            color=CS_COLOR,
            capsize=3,
            label=f"Callaway-Sant'Anna ATT(e), pointwise {lvl} CI",
        )
        if twfe:
            dyn = result.twfe_dynamic()
            ax.plot(
                list(dyn),
                [c for c, _ in dyn.values()],
                linestyle="none",
                marker="D",
                markerfacecolor="none",
                color=TWFE_COLOR,
                label=f"TWFE event study (TWFE D_it = {result.twfe_coef:.3g})",
            )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.axvline(-0.5, color="grey", linestyle="--", linewidth=0.8)
        group = "never-treated" if result.control_group == "never" else "not-yet-treated"
        ax.set_title(title or f"Event study: {result.panel.outcome} ({group} controls)", fontsize=11)
        ax.set_xlabel("event time e = t - g (periods since first treatment)")
        ax.set_ylabel(f"effect on {result.panel.outcome}")
        ax.set_xticks(e)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", frameon=False)
        fig.text(
            0.01,
            -0.02,
            f"overall ATT {result.overall.att:.4g} (se {result.overall.se:.3g}); {result.reps} Mammen multiplier "
            f"draws by unit, seed {result.seed}",
            fontsize=7,
            color="grey",
        )
        return _save(fig, stem)
