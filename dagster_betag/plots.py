"""Small PNG charts for asset metadata and the command line (library code, no Dagster)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

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


def tag_frequency_png(tag_counts: Sequence[tuple[str, int]], title: str) -> bytes:
    """Horizontal bars of the most frequent tags: junk tags stand out at the top."""
    tags = [tag for tag, _ in tag_counts][::-1]
    counts = [count for _, count in tag_counts][::-1]
    figure, axes = plt.subplots(figsize=(6, 0.25 * len(tags) + 1), dpi=100)
    axes.barh(tags, counts)
    axes.set_xlabel("items")
    axes.set_title(title, fontsize=10)
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
