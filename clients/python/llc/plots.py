"""PNG plots of a result (needs matplotlib: pip install 'llc-client[plots]')."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llc.results import EstimateResult


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'llc-client[plots]'") from None
    return plt


def plot_loss_traces(result: "EstimateResult", path: str) -> str:
    """One panel per restriction: each chain's draw losses, and L(w*) dashed."""
    plt = _pyplot()
    n = max(1, len(result.restrictions))
    fig, axes = plt.subplots(n, 1, figsize=(7, 2.6 * n), squeeze=False)
    for ax, r in zip(axes[:, 0], result.restrictions):
        for i, trace in enumerate(r.loss_traces):
            ax.plot(trace, lw=0.8, label=f"chain {i}")
        if math.isfinite(r.init_loss):
            ax.axhline(r.init_loss, color="k", ls="--", lw=0.8, label="L(w*)")
        ax.set_title(f"{r.name}: LLC {r.llc_mean:.4g} ± {r.llc_std:.3g}")
        ax.set_xlabel("draw")
        ax.set_ylabel("loss")
    axes[0, 0].legend(fontsize="small", ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_llc(result: "EstimateResult", path: str) -> str:
    """LLC per restriction with ± one standard deviation across chains."""
    plt = _pyplot()
    names = [r.name for r in result.restrictions]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.5))
    ax.bar(names, [r.llc_mean for r in result.restrictions], yerr=[r.llc_std for r in result.restrictions], capsize=4)
    ax.set_ylabel("LLC")
    ax.set_title("LLC per restriction")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_calibration(result: "EstimateResult", path: str) -> str:
    """λ̂ of each step-size pilot against ε (log axis), per restriction; the chosen ε marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in result.restrictions:
        pilots = [p for p in (r.calibration or {}).get("pilots") or [] if math.isfinite(p["llc"])]
        if not pilots:
            continue
        line, = ax.plot([p["step_size"] for p in pilots], [p["llc"] for p in pilots], "o-", label=r.name)
        for p in pilots:
            if p["verdict"] != "ok":
                ax.annotate(p["verdict"], (p["step_size"], p["llc"]), fontsize="x-small", rotation=30)
        chosen = r.calibration.get("step_size")
        if chosen:
            ax.axvline(chosen, color=line.get_color(), ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("step size ε")
    ax.set_ylabel("pilot λ̂")
    ax.set_title("step-size calibration (dashed: chosen ε)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_trajectories(result: "EstimateResult", path: str, *, extra: dict[str, tuple[list, list]] | None = None) -> str:
    """λ̂(t) of every restriction over training (log-t axis), ± one standard error as a band, candidate
    stage boundaries shaded (between the checkpoints either side; darker = more confident). `extra`:
    name -> (steps, values) drawn on a second axis (e.g. an induction score)."""
    plt = _pyplot()
    trajectories = result.trajectories
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for t in trajectories:
        pts = [p for p in t.points if math.isfinite(p["llc_mean"])]
        if not pts:
            continue
        x = [max(p["step"], 1) for p in pts]
        y = [p["llc_mean"] for p in pts]
        e = [p["llc_sem"] if math.isfinite(p["llc_sem"]) else 0.0 for p in pts]
        line, = ax.plot(x, y, "o-", ms=3, lw=1.2, label=t.restriction)
        ax.fill_between(x, [a - b for a, b in zip(y, e)], [a + b for a, b in zip(y, e)], color=line.get_color(),
                        alpha=0.2, lw=0)
        for b in t.boundaries:
            ax.axvspan(max(b["step_low"], 1), max(b["step_high"], 1), color=line.get_color(),
                       alpha=0.08 + 0.2 * b["confidence"], lw=0)
            ax.axvline(max(b["step"], 1), color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training step (log scale)")
    ax.set_ylabel("LLC λ̂ (± s.e.)")
    ax.set_title("LLC over training (shaded: candidate stage boundaries)")
    handles, labels = ax.get_legend_handles_labels()
    if extra:
        ax2 = ax.twinx()
        for name, (steps, values) in extra.items():
            h, = ax2.plot([max(s, 1) for s in steps], values, "k--", lw=1, label=name)
            handles.append(h)
            labels.append(name)
        ax2.set_ylabel(", ".join(extra))
    if handles:
        ax.legend(handles, labels, fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
