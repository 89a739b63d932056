"""The evaluation report: a results table (also Markdown), label-efficiency curves, 2D projections of volume
embeddings, Kaplan-Meier plots and segmentation overlays, as PNG bytes and plain data for MLflow."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from braindino.evaluation.survival import kaplan_meier, log_rank  # noqa: E402


def slug(text: str) -> str:
    """``text`` as a name MLflow metrics and file names accept."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


@dataclass(frozen=True)
class ResultRow:
    task: str
    encoder: str
    head: str
    fraction: float
    metric: str
    mean: float  # over seeds
    low: float  # bootstrap interval over test subjects
    high: float
    confidence: float
    seeds: tuple[float, ...]
    train_subjects: float
    test_subjects: int
    valid_resamples: int
    others: dict[str, float] = field(default_factory=dict)

    def metric_key(self) -> str:
        """The MLflow metric name stem of this row."""
        return "/".join(slug(part) for part in (self.task, self.encoder, self.head, f"f{self.fraction:g}"))


def markdown_table(rows: list[ResultRow]) -> str:
    lines = ["| task | encoder | head | labels | metric | mean | interval | seeds | train / test subjects |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        interval = "undefined" if not np.isfinite(row.low) else f"[{row.low:.3f}, {row.high:.3f}]"
        lines.append(f"| {row.task} | {row.encoder} | {row.head} | {row.fraction:.0%} | {row.metric} | {row.mean:.3f} | "
                     f"{interval} | {len(row.seeds)} | {row.train_subjects:g} / {row.test_subjects} |")
    confidence = rows[0].confidence if rows else 0.95
    lines += ["", f"Mean over seeds of the test metric; {confidence:.0%} percentile bootstrap interval resampling test "
              "subjects. Intervals from a handful of subjects say next to nothing."]
    return "\n".join(lines) + "\n"


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def label_efficiency_figure(rows: list[ResultRow], task: str) -> bytes:
    """The task's metric against the label fraction, one line per encoder and head, interval as a band."""
    figure, axis = plt.subplots(figsize=(6, 4))
    mine = [r for r in rows if r.task == task]
    for encoder, head in sorted({(r.encoder, r.head) for r in mine}):
        line = sorted((r for r in mine if (r.encoder, r.head) == (encoder, head)), key=lambda r: r.fraction)
        x = [100 * r.fraction for r in line]
        axis.plot(x, [r.mean for r in line], marker="o", label=f"{encoder} / {head}")
        axis.fill_between(x, [r.low for r in line], [r.high for r in line], alpha=0.15)
    axis.set_xscale("log")
    axis.set_xlabel("training subjects with labels (%)")
    axis.set_ylabel(mine[0].metric if mine else "")
    axis.set_title(f"{task}: label efficiency")
    axis.legend(fontsize=7)
    return png(figure)


def project_2d(embeddings: np.ndarray) -> tuple[np.ndarray, str]:
    """Two coordinates per row: UMAP when the package is installed, else the first two principal components."""
    try:
        import umap  # type: ignore[import-not-found]

        return umap.UMAP(n_components=2, random_state=0).fit_transform(embeddings), "UMAP"
    except ImportError:
        centred = embeddings - embeddings.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T
        return (coords if coords.shape[1] == 2 else np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))), "PCA"


def projection_figure(embeddings: np.ndarray, colourings: dict[str, list[str]], title: str) -> bytes:
    """Volume embeddings in 2D, one panel per colouring (e.g. by dataset, by label)."""
    coords, method = project_2d(np.asarray(embeddings, dtype=np.float64))
    figure, axes = plt.subplots(1, len(colourings), figsize=(5 * len(colourings), 4), squeeze=False)
    for axis, (name, values) in zip(axes[0], colourings.items()):
        for value in sorted(set(values)):
            picked = np.array(values) == value
            axis.scatter(coords[picked, 0], coords[picked, 1], s=18, label=value)
        axis.set_title(f"{title}: {method}, coloured by {name}", fontsize=9)
        axis.legend(fontsize=7)
    return png(figure)


def kaplan_meier_figure(time: np.ndarray, event: np.ndarray, high: np.ndarray, title: str) -> bytes:
    """Kaplan-Meier curves of the test subjects above and below the training split's median risk."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for flag, name in ((True, "high risk"), (False, "low risk")):
        group = high == flag
        if group.any():
            curve = kaplan_meier(time[group], event[group])
            axis.step(np.concatenate([[0], curve.time]), np.concatenate([[1], curve.survival]), where="post",
                      label=f"{name} (n={int(group.sum())})")
    test = log_rank(time, event, high)
    axis.set_title(f"{title}: log-rank p = {test.p_value:.3g}")
    axis.set_xlabel("time")
    axis.set_ylabel("survival")
    axis.legend()
    return png(figure)


def overlay_figure(images: np.ndarray, reference: np.ndarray, predicted: np.ndarray, title: str, count: int = 3) -> bytes:
    """Axial slices (those with the most reference foreground) with the reference and the prediction outlined."""
    picks = np.argsort([-(r > 0).sum() for r in reference])[:count]
    figure, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.4), squeeze=False)
    for axis, index in zip(axes[0], sorted(picks)):
        axis.imshow(images[index].T, cmap="gray", origin="lower")
        for labels, colour in ((reference[index], "lime"), (predicted[index], "red")):
            if (labels > 0).any():
                axis.contour(labels.T, levels=np.arange(labels.max()) + 0.5, colors=colour, linewidths=0.8, origin="lower")
        axis.set_axis_off()
    figure.suptitle(f"{title} (green: reference, red: prediction)", fontsize=9)
    return png(figure)
