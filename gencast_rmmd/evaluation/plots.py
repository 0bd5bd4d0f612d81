"""Scorecard heatmaps, spread/skill curves and rank-histogram grids (matplotlib, Agg backend)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from gencast_rmmd.evaluation.statistics import VL_DIM  # noqa: E402

MAX_ROWS = 16  # rank-histogram grid rows shown (variable-levels)
PREFERRED_LEVELS = (500, 850)  # rows shown first when there are more than MAX_ROWS


def _row_labels(ds: xr.Dataset) -> list[str]:
    return [str(x) for x in ds[VL_DIM].values]


def heatmap_values(
    card: xr.Dataset, metric: str, region: str = "global"
) -> tuple[np.ndarray, str, np.ndarray | None, float]:
    """(values [variable-level, lead], colour-bar label, significance mask or None, symmetric
    colour limit) of `scorecard_heatmap`. The limit is the largest finite magnitude, and values
    beyond it are clipped to it: a zero-spread entry (log2 0 = -inf, e.g. a deterministic
    member set) shows as the most under-dispersed colour instead of making the scale infinite
    (which drew every entry white)."""
    sel = card.sel(region=region, metric=metric)
    if "relative_change" in card and metric != "spread_skill":
        z = sel["relative_change"].transpose(VL_DIM, "lead_time").values
        label = f"{metric.upper()} change vs baseline (%)"
        sig = sel["significant"].transpose(VL_DIM, "lead_time").values.astype(bool)
    else:
        with np.errstate(divide="ignore"):
            z = np.log2(sel["value"].transpose(VL_DIM, "lead_time").values)
        label = "log2(spread/skill)  (0 = calibrated)"
        sig = None
    finite = np.abs(z[np.isfinite(z)])
    lim = max(float(finite.max()) if finite.size else 1.0, 1e-6)
    return np.clip(z, -lim, lim), label, sig, lim


def scorecard_heatmap(card: xr.Dataset, metric: str, path: str, region: str = "global") -> str:
    """Heatmap: rows variable-level, columns lead time, diverging colours centred on 0.

    With a baseline: percent change of `metric` vs the baseline (blue = lower error = better),
    significant entries marked with a dot. Without one: log2(spread/skill) (blue = under-dispersed,
    red = over-dispersed), for `metric="spread_skill"`.
    """
    z, label, sig, lim = heatmap_values(card, metric, region)
    cmap = "RdBu_r"
    rows = _row_labels(card)
    leads = card["lead_time"].values
    fig, ax = plt.subplots(figsize=(max(7.0, 3.7 + 0.45 * len(leads)), 1.5 + 0.28 * len(rows)))
    im = ax.imshow(z, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    if sig is not None:
        yy, xx = np.nonzero(sig)
        ax.scatter(xx, yy, s=6, c="k", marker="o", label="significant (p < 0.05)")
    ax.set_xticks(range(len(leads)), [str(int(x)) for x in leads], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("lead time (h)")
    ax.set_xticks(np.arange(-0.5, len(leads)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(rows)), minor=True)
    ax.grid(which="minor", color="w", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    fig.colorbar(im, ax=ax, label=label, shrink=0.8)
    ax.set_title(f"{card.attrs.get('forecast_model', 'forecast')}: {label} [{region}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def spread_skill_plot(card: xr.Dataset, path: str, region: str = "global") -> str:
    """Spread/skill ratio vs lead time per variable-level (dashed: baseline); 1 = calibrated."""
    sel = card.sel(region=region, metric="spread_skill")
    leads = card["lead_time"].values
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.tab20(np.linspace(0, 1, max(card.sizes[VL_DIM], 1)))
    for i, lab in enumerate(_row_labels(card)):
        ax.plot(leads, sel["value"].isel({VL_DIM: i}), color=colors[i], label=lab, lw=1.2)
        if "baseline_value" in sel:
            ax.plot(leads, sel["baseline_value"].isel({VL_DIM: i}), color=colors[i], ls="--", lw=1)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("lead time (h)")
    ax.set_ylabel("spread/skill (sqrt((M+1)/M) corrected)")
    title = card.attrs.get("forecast_model", "forecast")
    if "baseline_value" in sel:
        title += f" (solid) vs {card.attrs.get('baseline_model', 'baseline')} (dashed)"
    ax.set_title(f"{title} [{region}]", fontsize=9)
    if card.sizes[VL_DIM] <= 24:
        ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rank_histogram_grid(hist: xr.Dataset, path: str, region: str = "global") -> str:
    """Grid of rank histograms: rows variable-level, columns first/middle/last lead time."""
    h = hist["rank_histogram"].sel(region=region)
    leads = hist["lead_time"].values
    cols = sorted({0, len(leads) // 2, len(leads) - 1})
    labels = _row_labels(hist)
    levels = hist["level"].values
    order = sorted(
        range(len(labels)), key=lambda i: not (np.isnan(levels[i]) or levels[i] in PREFERRED_LEVELS)
    )
    picked = sorted(order[:MAX_ROWS])  # indices into the variable-level dim, one per panel row
    rows = [labels[i] for i in picked]
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(2.4 * len(cols), 1.3 * len(rows)), squeeze=False, sharex=True
    )
    nb = h.sizes["bin"]
    for r, (i, lab) in enumerate(zip(picked, rows)):
        for c, j in enumerate(cols):
            ax = axes[r, c]
            ax.bar(
                np.arange(nb),
                h.isel({VL_DIM: i, "lead_time": j}).values,
                color="tab:blue",
                width=0.9,
            )
            ax.axhline(1.0 / nb, color="k", lw=0.8, ls="--")
            ri = float(
                hist["reliability_index"].sel(region=region).isel({VL_DIM: i, "lead_time": j})
            )
            ax.set_title(f"{lab} +{int(leads[j])}h RI={ri:.2f}", fontsize=6)
            ax.tick_params(labelsize=5)
    fig.suptitle(f"rank histograms [{region}] (dashed: flat = calibrated)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(card: xr.Dataset, hist: xr.Dataset, out_dir: str) -> dict[str, str]:
    """Write every plot into `out_dir`; returns {file name: path}."""
    files = {}
    metrics = ["crps", "rmse"] if "relative_change" in card else ["spread_skill"]
    for m in metrics:
        name = f"scorecard_{m}.png"
        files[name] = scorecard_heatmap(card, m, os.path.join(out_dir, name))
    files["spread_skill.png"] = spread_skill_plot(card, os.path.join(out_dir, "spread_skill.png"))
    files["rank_histograms.png"] = rank_histogram_grid(
        hist, os.path.join(out_dir, "rank_histograms.png")
    )
    return files
