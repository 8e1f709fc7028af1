"""DET curve (Martin et al. 1997) as a PNG: FRR against FAR on normal-deviate axes.

Both axes are probit-scaled (``x = Φ⁻¹(FAR)``, ``y = Φ⁻¹(FRR)``), so two Gaussian score
distributions draw a straight line; ticks are labelled in % from 0.1 % to 50 %. A rate of
exactly 0 has no probit value: rates below 0.01 % (0 included) are drawn on the lower/left
edge, labelled "0", and rates above 50 % on the upper/right edge, so a perfectly
separated system draws its curve along the axes. Uses the Agg backend through
``matplotlib.figure.Figure`` (no pyplot, no global backend change).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike, NDArray

TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
LIMITS = (0.0001, 0.5)  # axis range (fractions); the lower edge stands for 0

_ND = NormalDist()


def probit(p: ArrayLike) -> NDArray[np.float64]:
    """Φ⁻¹(p) elementwise, p clipped to (1e-9, 1 - 1e-9)."""
    arr = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1.0 - 1e-9)
    flat = np.fromiter((_ND.inv_cdf(float(v)) for v in arr.ravel()), np.float64, arr.size)
    return flat.reshape(arr.shape)


def _label(p: float) -> str:
    pct = 100.0 * p
    return f"{pct:g}"


@dataclass(frozen=True)
class Curve:
    """One DET curve: operating points (FAR, FRR) and its EER (fractions)."""

    label: str
    far: NDArray[np.float64]
    frr: NDArray[np.float64]
    eer: float


def plot_det(
    path: str | Path,
    curves: Sequence[Curve],
    *,
    title: str = "DET curve",
    note: str = "",
    dpi: int = 120,
) -> Path:
    """Draw ``curves`` on one DET plot, EER points marked, and save a PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lo, hi = probit(np.array(LIMITS))
    fig = Figure(figsize=(6.0, 6.0), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ticks = probit(np.array((LIMITS[0], *TICKS)))
    labels = ["0", *(_label(t) for t in TICKS)]
    ax.plot([lo, hi], [lo, hi], linestyle=":", color="0.6", linewidth=1, label="FAR = FRR")
    for curve in curves:
        x = np.clip(probit(curve.far), lo, hi)
        y = np.clip(probit(curve.frr), lo, hi)
        (line,) = ax.plot(x, y, linewidth=1.8, label=curve.label, clip_on=False, zorder=4)
        e = float(np.clip(probit(np.array([curve.eer]))[0], lo, hi))
        ax.plot(
            [e],
            [e],
            marker="o",
            markersize=7,
            markerfacecolor="white",
            markeredgecolor=line.get_color(),
            markeredgewidth=1.8,
            linestyle="none",
            label=f"EER {100 * curve.eer:.2f} %",
            clip_on=False,
            zorder=5,
        )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels)
    ax.set_xlabel("False acceptance rate, FAR (%)")
    ax.set_ylabel("False rejection rate, FRR (%)")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.grid(True, color="0.85", linewidth=0.8)
    ax.legend(loc="upper right", fontsize=9, framealpha=0.9)
    if note:
        ax.text(
            0.02,
            0.02,
            note,
            transform=ax.transAxes,
            fontsize=8,
            color="0.3",
            va="bottom",
            ha="left",
        )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
