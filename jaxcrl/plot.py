"""Plots shared by experiments: causal graphs, correlation matrices, training curves.

All functions draw on a matplotlib Axes (created if None) with the non-interactive Agg
backend, and return the Axes so notebooks can compose them.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _ax(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    return ax


def plot_graph(adj, ax=None, *, title: str = "graph", labels=None):
    """Draws a DAG ``adj[i, j] != 0 <=> i -> j`` with nodes on a circle.

    Args:
      adj: [d, d] adjacency or weights (edge width follows |weight|).
    """
    ax = _ax(ax)
    adj = np.asarray(adj)
    d = adj.shape[0]
    angle = np.pi / 2 - 2 * np.pi * np.arange(d) / d
    pos = np.stack([np.cos(angle), np.sin(angle)], 1)
    wmax = np.abs(adj).max() or 1.0
    for i, j in zip(*np.nonzero(adj), strict=True):
        if i == j:
            continue
        start, end = pos[i], pos[j]
        vec = end - start
        unit = vec / np.linalg.norm(vec)
        ax.annotate("", xy=end - 0.13 * unit, xytext=start + 0.13 * unit,
                    arrowprops=dict(arrowstyle="-|>", lw=0.5 + 2 * abs(adj[i, j]) / wmax,
                                    color="tab:red" if adj[i, j] < 0 else "tab:blue"))
    for i in range(d):
        ax.add_patch(plt.Circle(pos[i], 0.12, color="white", ec="black", zorder=3))
        ax.text(*pos[i], labels[i] if labels else f"z{i}", ha="center", va="center", zorder=4)
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title)
    return ax


def plot_matrix(m, ax=None, *, title: str = "", xlabel: str = "", ylabel: str = "",
                vmin: float = 0.0, vmax: float = 1.0, cmap: str = "viridis", annotate=True):
    """Heatmap of a matrix (e.g. |corr| between true and learned latents)."""
    ax = _ax(ax)
    m = np.asarray(m)
    im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap)
    if annotate and m.size <= 144:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < (vmin + vmax) / 2 else "black")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    plt.colorbar(im, ax=ax, fraction=0.046)
    return ax


def plot_curves(curves: dict, ax=None, *, title: str = "", xlabel: str = "step",
                ylabel: str = ""):
    """Line plot of ``{label: [n_points] or [n_seeds, n_points]}`` (seeds drawn thin)."""
    ax = _ax(ax)
    for label, y in curves.items():
        y = np.asarray(y)
        if y.ndim == 1:
            ax.plot(y, label=label)
        else:
            lines = ax.plot(y.T, lw=0.8, alpha=0.6)
            lines[0].set_label(label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return ax


def savefig(ax_or_fig, path: str | os.PathLike) -> None:
    """Saves the figure owning ``ax_or_fig`` as PNG and closes it."""
    fig = ax_or_fig.figure if hasattr(ax_or_fig, "figure") else ax_or_fig
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
