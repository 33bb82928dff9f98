"""Figures the notebooks show (and save under ``results/<profile>/figures``).

Scope: matplotlib plotting of mining statistics and of the knowledge graph. Each
function draws on a given or new axis and returns the figure; :func:`save` writes
it atomically as PNG.
"""

from __future__ import annotations

from pathlib import Path


import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pandas as pd

from .io import atomic_path

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


def bar_counts(counts: pd.Series, title: str, ax: plt.Axes | None = None, xlabel: str = "questions") -> plt.Figure:
    """Horizontal bars of a value_counts() series, largest on top, with the count at the end."""
    fig, ax = _axis(ax, (6, max(2.5, 0.32 * len(counts) + 1)))
    counts = counts.sort_values()
    ax.barh([str(i) for i in counts.index], counts.values, color="#4c72b0")
    for y, v in enumerate(counts.values):
        ax.text(v, y, f" {v:,}", va="center", fontsize=8)
    ax.set(xlabel=xlabel, title=title)
    fig.tight_layout()
    return fig


def draw_chain(record: dict, ax: plt.Axes | None = None) -> plt.Figure:
    """A question's reasoning chain left to right: masked placeholders above, real names below,
    relation on each arrow, the number of clues under each node."""
    cons = record["constraints"]
    fig, ax = _axis(ax, (max(7, 2.3 * len(cons)), 2.6))
    placeholders = [k for k in record["entity_mapping"] if not k.startswith("Clue_")]
    for i, (c, ph) in enumerate(zip(cons, placeholders)):
        ax.scatter([i], [0], s=900, color=TYPE_COLOURS.get(c["type"], "grey"), edgecolors="k", zorder=3)
        ax.text(i, 0.32, ph, ha="center", fontsize=8, weight="bold")
        ax.text(i, -0.38, _short(record["entity_mapping"][ph], 24), ha="center", fontsize=7)
        ax.text(i, -0.58, f"{c['type']} · {len(c['clues'])} clue(s)", ha="center", fontsize=6, color="#555")
        if i:
            link = c["link"]
            arrow = "→" if link["direction"] == "fwd" else "←"
            ax.annotate("", xy=(i - 0.18, 0), xytext=(i - 0.82, 0), arrowprops={"arrowstyle": "-", "lw": 1.2})
            ax.text(i - 0.5, 0.08, f"{link['relation']} {arrow}", ha="center", fontsize=7)
    ax.set_xlim(-0.6, len(cons) - 0.4)
    ax.set_ylim(-0.75, 0.55)
    ax.axis("off")
    ax.set_title(f"{record['hops']}-hop chain ({record['sampling_algorithm']}): answer = {record['answer']}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def calibration_bars(before: dict, after: dict, ax: plt.Axes | None = None) -> plt.Figure:
    """Share of questions each solver answers, before and after calibration."""
    fig, ax = _axis(ax, (6, 3.2))
    solvers = [k for k in before if k != "n" and not k.startswith("judged_")]
    x = np.arange(len(solvers))
    b = [100 * before[s] for s in solvers]
    a = [100 * after[s] for s in solvers]
    ax.bar(x - 0.2, b, 0.4, label=f"first attempt (n={before['n']:,})", color="#dd8452")
    ax.bar(x + 0.2, a, 0.4, label=f"after calibration (n={after['n']:,})", color="#55a868")
    for xi, v in zip(x - 0.2, b):
        ax.text(xi, v, f"{v:.1f}%", ha="center", va="bottom", fontsize=8)
    for xi, v in zip(x + 0.2, a):
        ax.text(xi, v, f"{v:.1f}%", ha="center", va="bottom", fontsize=8)
    ax.axhline(10, color="k", ls="--", lw=0.8)
    ax.set_xticks(x, solvers)
    ax.set(ylabel="% of questions solved", title="Difficulty calibration (goal: ≤ 10% solved)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def histogram(values: list[float], title: str, xlabel: str, *, bins: int | list[float] = 20,
              reference: float | None = None, reference_label: str = "", ax: plt.Axes | None = None) -> plt.Figure:
    """A histogram with an optional vertical reference line (a paper's figure or a limit)."""
    fig, ax = _axis(ax)
    ax.hist(values, bins=bins, color="#4477aa", edgecolor="white")
    if reference is not None:
        ax.axvline(reference, color="#cc3311", linestyle="--", label=reference_label)
        ax.legend()
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    fig.tight_layout()
    return fig


STAGE_COLOURS = {"grpo": "#228833", "sft": "#4477aa", "base": "#999999"}  # first match wins: "sft+grpo" is grpo


def stage_bars(table: pd.DataFrame, column: str, title: str, *, sd: str | None = None,
               ci: tuple[str, str] | None = None, ax: plt.Axes | None = None,
               ylim: tuple[float, float] | None = (0, 1)) -> plt.Figure:
    """One bar per model (the table's index), coloured by stage, with values and optional error bars:
    ``ci`` names the (low, high) columns of an interval (asymmetric bars), ``sd`` a symmetric spread."""
    fig, ax = _axis(ax, (5, 3.2))
    names = [str(i) for i in table.index]
    colours = [next((c for k, c in STAGE_COLOURS.items() if k in n.lower()), "#ee7733") for n in names]
    values = table[column].astype(float).values
    err = None
    if ci:
        low, high = table[ci[0]].astype(float).values, table[ci[1]].astype(float).values
        err = np.nan_to_num(np.vstack([values - low, high - values]).clip(min=0))
    elif sd:
        err = table[sd].values
    ax.bar(names, values, yerr=err, capsize=5 if err is not None else 0, color=colours)
    for x, v in enumerate(table[column].values):
        ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set(title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    return fig


def learning_curve(table: pd.DataFrame, title: str, *, column: str = "pass@1",
                   ci: tuple[str, str] = ("ci95 low", "ci95 high"), xlabel: str = "training trajectories seen",
                   ax: plt.Axes | None = None) -> plt.Figure:
    """Held-out accuracy against training data: the table's index is the x value (e.g. trajectories seen,
    0 = the base model), ``column`` the y value with its (low, high) interval as error bars
    (a :func:`medkit.evaluation.stage_table` keyed by the x values)."""
    fig, ax = _axis(ax, (6, 3.4))
    x = np.asarray(table.index, dtype=float)
    y = table[column].astype(float).values
    low, high = table[ci[0]].astype(float).values, table[ci[1]].astype(float).values
    err = np.nan_to_num(np.vstack([y - low, high - y]).clip(min=0))
    ax.errorbar(x, y, yerr=err, marker="o", capsize=4, color=STAGE_COLOURS["sft"])
    for xi, yi in zip(x, y):
        ax.annotate(f"{yi:.2f}", (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel=f"held-out {column} (95% CI)")
    ax.set_ylim(0, max(0.1, float(np.nanmax(high)) * 1.15) if len(high) else 1)
    fig.tight_layout()
    return fig


def grpo_curves(log: pd.DataFrame) -> plt.Figure:
    """GRPO's per-step training log (TRL's logged metrics, one row per step) in six panels: mean reward
    terms, the composite reward with its spread, the preference parts, tool calls per rollout, the
    tool-failure and answer rates, the KL to the start with the loss. A metric the log lacks is an
    empty line, not an error (older runs, or accuracy-only reward weights)."""
    def col(name: str) -> pd.Series:
        return log[name] if name in log else pd.Series([np.nan] * len(log), index=log.index)

    step = log["step"] if "step" in log else pd.Series(range(1, len(log) + 1), index=log.index)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for term, c in (("accuracy", "#228833"), ("preference", "#4477aa"), ("efficiency", "#cc3311")):
        axes[0, 0].plot(step, col(f"rewards/{term}/mean"), marker="o", ms=3, label=term, color=c)
    axes[0, 0].set(title="reward terms (mean per step)", xlabel="step", ylim=(-0.05, 1.05))
    axes[0, 0].legend(fontsize=8)
    reward, spread = col("reward"), col("reward_std")
    axes[0, 1].plot(step, reward, marker="o", ms=3, color="k")
    axes[0, 1].fill_between(step, reward - spread, reward + spread, alpha=0.15, color="k")
    axes[0, 1].set(title="composite reward (mean ± sd)", xlabel="step")
    for part, c in (("well_formed", "#66ccee"), ("grounded", "#aa3377"), ("verified", "#ccbb44")):
        axes[0, 2].plot(step, col(f"preference/{part}"), marker="o", ms=3, label=part, color=c)
    axes[0, 2].set(title="preference parts", xlabel="step", ylim=(-0.05, 1.05))
    axes[0, 2].legend(fontsize=8)
    axes[1, 0].plot(step, col("tools/call_frequency"), marker="o", ms=3)
    axes[1, 0].set(title="tool calls per rollout", xlabel="step")
    axes[1, 1].plot(step, col("tools/failure_frequency"), marker="o", ms=3, color="#cc3311", label="tool failures")
    axes[1, 1].plot(step, col("rollout/answer_rate"), marker="s", ms=3, color="#228833", label="answer rate")
    axes[1, 1].set(title="tool-failure frequency, answer rate", xlabel="step", ylim=(-0.05, 1.05))
    axes[1, 1].legend(fontsize=8)
    axes[1, 2].plot(step, col("kl"), marker="o", ms=3, color="#ee7733")
    axes[1, 2].twinx().plot(step, col("loss"), marker="x", ms=3, color="#555555")
    axes[1, 2].set(title="KL to the start (orange) and loss (grey)", xlabel="step")
    fig.tight_layout()
    return fig


def reward_vs_heldout(log: pd.DataFrame, checkpoints: pd.DataFrame, title: str) -> plt.Figure:
    """The reward-hacking picture: GRPO's training reward per step (left axis) against held-out pass@1
    with its 95% interval at each checkpoint (right axis, step 0 = the starting policy), and the
    answer rates of both. ``log``: per-step ``step``, ``reward`` (and ``rollout/answer_rate``);
    ``checkpoints``: :func:`medkit.grpo.reward_hacking_check` rows (``step``, ``heldout_pass@1``,
    ``heldout_ci95``, ``heldout_answer_rate``)."""
    fig, (ax, ax_rate) = plt.subplots(1, 2, figsize=(11, 3.6))
    ax.plot(log["step"], log["reward"], marker=".", color="#555555", label="training reward")
    ax.set(xlabel="GRPO step", ylabel="composite training reward", title=title)
    right = ax.twinx()
    x = checkpoints["step"].astype(float).values
    y = checkpoints["heldout_pass@1"].astype(float).values
    ci = np.array([c if c else (np.nan, np.nan) for c in checkpoints["heldout_ci95"]], dtype=float)
    err = np.nan_to_num(np.vstack([y - ci[:, 0], ci[:, 1] - y]).clip(min=0))
    right.errorbar(x, y, yerr=err, marker="o", capsize=4, color=STAGE_COLOURS["grpo"], label="held-out pass@1")
    right.set_ylabel("held-out pass@1 (95% CI)")
    right.set_ylim(0, max(0.1, float(np.nanmax(ci[:, 1])) * 1.15) if len(ci) else 1)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    if "rollout/answer_rate" in log:
        ax_rate.plot(log["step"], log["rollout/answer_rate"], marker=".", color="#555555", label="training rollouts")
    ax_rate.plot(x, checkpoints["heldout_answer_rate"].astype(float).values, marker="o",
                 color=STAGE_COLOURS["grpo"], label="held-out rollouts")
    ax_rate.set(xlabel="GRPO step", ylabel="rollouts ending with an answer", title="answer rate", ylim=(-0.05, 1.05))
    ax_rate.legend(fontsize=8)
    fig.tight_layout()
    return fig


def reported_vs_measured(frame: pd.DataFrame, ax: plt.Axes | None = None) -> plt.Figure:
    """Horizontal bars of pass@1 (%) grouped by benchmark; reported ones hatched, measured ones solid with sd."""
    fig, ax = _axis(ax, (10, max(3.5, 0.34 * len(frame) + 1.5)))
    frame = frame.reset_index(drop=True)
    labels, y = [], []
    for i, row in frame.iterrows():
        measured = row["kind"] == "measured"
        ax.barh(i, row["pass@1"], xerr=row["sd"] if measured else None, capsize=3,
                color="#228833" if measured else "#cccccc", hatch=None if measured else "//", edgecolor="#555555")
        ax.text(row["pass@1"], i, f" {row['pass@1']:.1f}", va="center", fontsize=7)
        labels.append(f"{row['benchmark']} · {row['system']} [{row['kind']}]")
        y.append(i)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="pass@1 (%)")
    ax.set_title("pass@1: reported by the paper / benchmark repos (hatched) vs measured here (solid)", fontsize=9)
    fig.tight_layout()
    return fig


def benchmark_bars(name: str, bench: dict) -> tuple[dict[str, float], str]:
    """(bars, y label) of one ``results/bench/<name>.json``: the headline figure of each mode it measured."""
    if name == "sft":
        modes = {k: v for k, v in bench.items() if isinstance(v, dict) and "mode" in v and "tokens_per_second" in v}
        return {k: float(v["tokens_per_second"]) for k, v in modes.items()}, "training tokens / s"
    if name == "grpo":
        return ({k: float(v["seconds_per_step"]) for k, v in (bench.get("runs") or {}).items() if "seconds_per_step" in v},
                "seconds / GRPO step")
    if name == "generation":
        return ({f"batch {r['batch_size']}": float(r["tokens_per_s"]) for r in bench.get("runs") or [] if "tokens_per_s" in r},
                "generated tokens / s")
    if name == "engine":
        return ({k.removeprefix("agent_"): float(v["rollouts_per_second"]) for k, v in (bench.get("summary") or {}).items()
                 if "rollouts_per_second" in v}, "agent rollouts / s")
    if name == "retriever":
        lat = bench.get("latency_ms") or {}
        return ({k.split(" ")[0]: float(v["p50"]) for k, v in lat.items() if isinstance(v, dict) and "p50" in v},
                "query latency p50 (ms)")
    raise ValueError(f"no bar view for benchmark {name!r}")


def stacked_segments(segments: pd.DataFrame, title: str, ax: plt.Axes | None = None,
                     xlabel: str = "mean tokens per trajectory") -> plt.Figure:
    """One horizontal bar per row of ``segments`` (e.g. hop counts), its columns (e.g. system, thoughts,
    observations) stacked left to right, with the row total at the bar's end."""
    fig, ax = _axis(ax, (8, 0.5 * len(segments) + 1.8))
    segments.plot.barh(stacked=True, ax=ax, width=0.7, colormap="tab10")
    for i, total in enumerate(segments.sum(axis=1)):
        ax.text(total, i, f" {total:,.0f}", va="center", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
    fig.tight_layout()
    return fig


STAGE_PANELS = (("pass@1", "held-out pass@1 (95% CI over questions)", (0, 1)),
                ("answer rate", "rollouts ending with an answer", (0, 1)),
                ("format-error rate", "turns that break the protocol", (0, 1)),
                ("tool calls / rollout", "tool calls per rollout", None))


def stage_panels(table: pd.DataFrame, columns: tuple[str, ...] = ("pass@1", "answer rate", "format-error rate",
                                                                   "tool calls / rollout")) -> plt.Figure:
    """Side-by-side :func:`stage_bars` of a :func:`medkit.evaluation.stage_table` (pass@1 with its interval)."""
    panels = [p for p in STAGE_PANELS if p[0] in columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.5), squeeze=False)
    for ax, (column, title, ylim) in zip(axes[0], panels):
        ci = ("ci95 low", "ci95 high") if column == "pass@1" else None
        stage_bars(table, column, title, ci=ci, ax=ax, ylim=ylim)
    fig.tight_layout()
    return fig


def by_hops_and_specialty(hops: pd.DataFrame, specialty: pd.DataFrame) -> plt.Figure:
    """pass@1 per hop count (bars per stage) and per specialty (annotated heatmap), from
    :func:`medkit.evaluation.by_group` tables."""
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.2, 0.35 * len(specialty) + 1.2)))
    colours = [next((c for k, c in STAGE_COLOURS.items() if k in str(n)), "#999999") for n in hops.columns]
    hops.plot.bar(ax=axes[0], color=colours)
    axes[0].set(title="pass@1 by hop count", xlabel="hops", ylim=(0, 1))
    im = axes[1].imshow(specialty.values, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    axes[1].set_yticks(range(len(specialty)), specialty.index, fontsize=7)
    axes[1].set_xticks(range(len(specialty.columns)), specialty.columns)
    for i in range(specialty.shape[0]):
        for j in range(specialty.shape[1]):
            v = specialty.iat[i, j]
            if pd.notna(v):
                axes[1].text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    axes[1].set_title("pass@1 by specialty")
    fig.colorbar(im, ax=axes[1], fraction=0.03)
    fig.tight_layout()
    return fig

