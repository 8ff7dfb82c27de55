"""The report's plots, drawn with matplotlib and embedded as PNG data URIs (the page opens offline)."""
from __future__ import annotations

import base64
import io

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve


def _figure(width: float = 4.2, height: float = 3.6):
    import matplotlib
    matplotlib.use("Agg")  # no display: the report is built in batch jobs too
    import matplotlib.pyplot as plt
    return plt, *plt.subplots(figsize=(width, height))


def data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def roc(targets: np.ndarray, probs: np.ndarray, classes: list[str]) -> str:
    plt, fig, ax = _figure()
    for i in _curves(classes):
        fpr, tpr, _ = roc_curve(targets == i, probs[:, i])
        ax.plot(fpr, tpr, label=classes[i])
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax.legend(fontsize=8)
    return data_uri(fig)


def precision_recall(targets: np.ndarray, probs: np.ndarray, classes: list[str]) -> str:
    plt, fig, ax = _figure()
    for i in _curves(classes):
        precision, recall, _ = precision_recall_curve(targets == i, probs[:, i])
        ax.plot(recall, precision, label=classes[i])
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return data_uri(fig)


def confusion(matrix: list[list[int]], classes: list[str]) -> str:
    plt, fig, ax = _figure(1.2 + 0.9 * len(classes), 1.0 + 0.8 * len(classes))
    m = np.array(matrix)
    ax.imshow(m, cmap="Blues")
    for (r, c), v in np.ndenumerate(m):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="Confusion matrix")
    return data_uri(fig)


def reliability(bins: list[dict]) -> str:
    plt, fig, ax = _figure()
    filled = [b for b in bins if b["n"]]
    ax.bar([(b["low"] + b["high"]) / 2 for b in filled], [b["accuracy"] for b in filled],
           width=[b["high"] - b["low"] for b in filled], edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="perfect calibration")
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return data_uri(fig)


def maps(cells: list[dict], columns: int = 4) -> str:
    """A grid of explanation maps: each cell {map, image (or None), title}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = max(1, -(-len(cells) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, cell in zip(axes.ravel(), cells):
        if cell["image"] is not None:
            ax.imshow(cell["image"], cmap="gray")
            ax.imshow(cell["map"], cmap="jet", alpha=0.45)
        else:
            ax.imshow(cell["map"], cmap="jet")
        ax.set_title(cell["title"], fontsize=7)
    return data_uri(fig)


def _curves(classes: list[str]) -> list[int]:
    """Binary: the positive class's curve alone; otherwise one curve per class (one-vs-rest)."""
    return [1] if len(classes) == 2 else list(range(len(classes)))
