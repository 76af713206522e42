"""Small PNG charts for asset metadata and the command line (library code, no Dagster)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402


def loss_curve_png(step_losses: Sequence[float], validation_before: float, validation_after: float) -> bytes:
    """Train loss per optimizer step, with the validation loss before and after training."""
    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    axes.plot(range(1, len(step_losses) + 1), step_losses, label="train loss (per step)", linewidth=1)
    axes.axhline(validation_before, color="grey", linestyle="--", label=f"validation before {validation_before:.3f}")
    axes.axhline(validation_after, color="green", linestyle="--", label=f"validation after {validation_after:.3f}")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy (answer tokens)")
    axes.legend(fontsize=8)
    return _png(figure)


def fit_curve_png(epochs: Sequence[Mapping[str, float]], best_epoch: int) -> bytes:
    """The fit curve: in-sample fit, the same share in another item's beams (the gap between the
    two is what the model learned about *this* item) and the beams' pairwise Jaccard against
    epochs, with the validation loss on a second axis; epoch 0 is before training."""
    figure, axes = plt.subplots(figsize=(6, 3.4), dpi=100)
    x = [record["epoch"] for record in epochs]
    axes.plot(x, [record["in_sample_fit"] for record in epochs], marker="o", label="in-sample fit")
    other = [record["in_sample_fit_of_other_items"] for record in epochs]
    axes.plot(x, other, marker="o", linestyle=":", color="C0", label="... in another item's beams")
    axes.plot(x, [record["beam_jaccard"] for record in epochs], marker="s", label="beam Jaccard across items")
    axes.axvline(best_epoch, color="grey", linestyle=":", label=f"kept: epoch {best_epoch}")
    axes.set_xlabel("epoch")
    axes.set_ylabel("share")
    loss_axes = axes.twinx()
    losses = [record["validation_loss"] for record in epochs]
    loss_axes.plot(x, losses, color="green", linestyle="--", label="validation loss")
    loss_axes.set_ylabel("validation loss")
    lines = axes.get_legend_handles_labels()
    loss_lines = loss_axes.get_legend_handles_labels()
    axes.legend(lines[0] + loss_lines[0], lines[1] + loss_lines[1], fontsize=8)
    return _png(figure)


def tag_frequency_png(tag_counts: Sequence[tuple[str, int]], title: str) -> bytes:
    """Horizontal bars of the most frequent tags: junk tags stand out at the top."""
    tags = [tag for tag, _ in tag_counts][::-1]
    counts = [count for _, count in tag_counts][::-1]
    figure, axes = plt.subplots(figsize=(6, 0.25 * len(tags) + 1), dpi=100)
    axes.barh(tags, counts)
    axes.set_xlabel("items")
    axes.set_title(title, fontsize=10)
    return _png(figure)


def grouped_bars_png(values: Mapping[str, Mapping[str, float]], ylabel: str, title: str) -> bytes:
    """One group of bars per outer key (e.g. method / setting), one bar per inner key (tag source)."""
    groups = list(values)
    series = list(dict.fromkeys(name for group in values.values() for name in group))
    width = 0.8 / max(1, len(series))
    figure, axes = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 2), 3.6), dpi=100)
    for index, name in enumerate(series):
        offsets = [position + (index - (len(series) - 1) / 2) * width for position in range(len(groups))]
        axes.bar(offsets, [values[group].get(name, 0.0) for group in groups], width, label=name)
    axes.set_xticks(range(len(groups)), groups, fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, ncols=2)
    return _png(figure)


def curves_png(curves: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str, title: str) -> bytes:
    """One line per key through its (x, y) points, x on a log2 axis (beam counts)."""
    figure, axes = plt.subplots(figsize=(6, 3.4), dpi=100)
    for name, points in curves.items():
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    return _png(figure)


def rank_frequency_png(counts_by_series: Mapping[str, Sequence[int]], title: str) -> bytes:
    """Tag popularity distribution: items per tag against the tag's rank, log-log, per series."""
    figure, axes = plt.subplots(figsize=(6, 3.4), dpi=100)
    for name, counts in counts_by_series.items():
        ordered = sorted(counts, reverse=True)
        axes.plot(range(1, len(ordered) + 1), ordered, label=f"{name} ({len(ordered)} tags)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("tag rank")
    axes.set_ylabel("items with the tag")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7)
    return _png(figure)


def markdown_image(png: bytes, alt: str) -> str:
    """A PNG inlined as markdown, the way Dagster metadata shows pictures."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
