"""Figures the notebooks show (and save under ``results/<profile>/figures``).

Scope: matplotlib plotting of mining statistics and of the knowledge graph. Each
function draws on a given or new axis and returns the figure; :func:`save` writes
it atomically as PNG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib


import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_path  # noqa: E402

TYPE_COLOURS = {
    "disease": "#d62728", "phenotype": "#1f77b4", "gene": "#2ca02c", "drug": "#9467bd",
    "drug_class": "#c5b0d5", "inheritance": "#ff7f0e", "onset": "#8c564b", "clinical_course": "#e377c2",
}


def _axis(ax: plt.Axes | None, size: tuple[float, float] = (7, 4)) -> tuple[plt.Figure, plt.Axes]:
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


def df_distribution(stats: pd.DataFrame, max_df: int, ax: plt.Axes | None = None) -> plt.Figure:
    """Entities per document frequency (log-log), one line per type, rare threshold marked."""
    fig, ax = _axis(ax)
    for t, group in stats[stats["df"] > 0].groupby("type"):
        counts = group["df"].value_counts().sort_index()
        ax.plot(counts.index, counts.values, marker=".", lw=1, label=f"{t} ({len(group):,})",
                color=TYPE_COLOURS.get(t))
    ax.axvline(max_df + 0.5, color="k", ls="--", lw=1)
    ax.text(max_df + 0.6, ax.get_ylim()[1] * 0.5 if ax.get_ylim()[1] > 1 else 1, f" rare: df ≤ {max_df}", va="top")
    ax.set(xscale="log", yscale="log", xlabel="document frequency (passages mentioning the entity)",
           ylabel="number of entities", title="Entity document frequency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rare_by_type(rare: pd.DataFrame, stats: pd.DataFrame, ax: plt.Axes | None = None) -> plt.Figure:
    """Rare entities per type next to all entities of that type."""
    fig, ax = _axis(ax, (6, 3.5))
    all_counts = stats["type"].value_counts()
    rare_counts = rare["type"].value_counts().reindex(all_counts.index, fill_value=0)
    keep = rare_counts[rare_counts > 0].index
    y = np.arange(len(keep))
    ax.barh(y, all_counts[keep], color="#dddddd", label="all entities")
    ax.barh(y, rare_counts[keep], color=[TYPE_COLOURS.get(t, "grey") for t in keep], label="rare & meaningful")
    for yi, t in zip(y, keep):
        ax.text(all_counts[t], yi, f" {rare_counts[t]:,} / {all_counts[t]:,}", va="center", fontsize=8)
    ax.set_yticks(y, keep)
    ax.set(xlabel="entities", title="Rare entities by type")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def degree_distribution(g: nx.MultiDiGraph, ax: plt.Axes | None = None) -> plt.Figure:
    """Complementary CDF of node degree (distinct neighbours), log-log, per node type."""
    fig, ax = _axis(ax)
    und = nx.Graph(g)
    types = nx.get_node_attributes(g, "type")
    deg = pd.DataFrame({"degree": dict(und.degree()), "type": types})
    for t, group in deg.groupby("type"):
        if len(group) < 5:
            continue
        d = np.sort(group["degree"].to_numpy())
        ccdf = 1.0 - np.arange(len(d)) / len(d)
        ax.step(np.maximum(d, 1), ccdf, where="post", label=f"{t} ({len(d):,})", color=TYPE_COLOURS.get(t))
    ax.set(xscale="log", yscale="log", xlabel="degree (distinct neighbours)", ylabel="P(degree ≥ x)",
           title="KG degree distribution")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_neighbourhood(sub: nx.MultiDiGraph, centre: str, ax: plt.Axes | None = None, seed: int = 13,
                       label_chars: int = 28) -> plt.Figure:
    """Draw a small typed subgraph: nodes coloured by type, edges labelled by relation."""
    fig, ax = _axis(ax, (11, 8))
    simple = nx.Graph(sub)
    pos = nx.spring_layout(simple, seed=seed, k=1.2 / max(1, np.sqrt(simple.number_of_nodes())))
    colours = [TYPE_COLOURS.get(sub.nodes[n].get("type"), "grey") for n in simple]
    sizes = [900 if n == centre else 350 for n in simple]
    nx.draw_networkx_edges(simple, pos, ax=ax, alpha=0.35)
    nx.draw_networkx_nodes(simple, pos, ax=ax, node_color=colours, node_size=sizes, edgecolors="k", linewidths=0.5)
    labels = {n: _short(sub.nodes[n].get("name", n), label_chars) for n in simple}
    nx.draw_networkx_labels(simple, pos, labels, ax=ax, font_size=7)
    edge_labels = {}  # only the centre's own edges are labelled, to keep the drawing legible
    for u, v, k in sub.edges(keys=True):
        if centre in (u, v):
            edge_labels.setdefault(tuple(sorted((u, v))), set()).add(k)
    nx.draw_networkx_edge_labels(simple, pos, {e: ", ".join(sorted(r)) for e, r in edge_labels.items()},
                                 ax=ax, font_size=5, alpha=0.7)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=t) for t, c in TYPE_COLOURS.items()
               if any(sub.nodes[n].get("type") == t for n in sub)]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    ax.set_title(f"Neighbourhood of {sub.nodes[centre].get('name', centre)} ({centre})")
    ax.axis("off")
    fig.tight_layout()
    return fig


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def save(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path
