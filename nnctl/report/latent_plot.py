"""A 2-D map of an autoencoder's codes as a PNG: the first two dimensions, or the first two
principal components when the code is wider, coloured by label when the data has one."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from nnctl.report.plots import require_matplotlib
from nnctl.runs.store import atomic_write


def project(codes: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """(N, 2) coordinates and the axis names: z0/z1 for a code of 1 or 2 dimensions, else PCA.

    Notes
    -----
    PCA by the SVD of the centred codes, C - mean = U S V^T; the coordinates are the first two
    columns of U S. A sign is arbitrary: each axis is flipped so its largest |value| is positive,
    which makes the picture a function of the codes alone.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.shape[1] == 1:
        return np.column_stack([codes[:, 0], np.zeros(len(codes))]), ("z0", "")
    if codes.shape[1] == 2:
        return codes, ("z0", "z1")
    centred = codes - codes.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    xy = u[:, :2] * s[:2]
    flip = np.sign(xy[np.argmax(np.abs(xy), axis=0), [0, 1]])
    return xy * np.where(flip == 0, 1.0, flip), ("PC1", "PC2")


def plot_latent(codes: np.ndarray, labels: np.ndarray | None, names: list | None, out: Path, title: str,
                dpi: int = 100) -> str:
    """Write the map to `out`; returns which axes were drawn ("z0, z1" or "PC1, PC2")."""
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    xy, axes = project(codes)
    fig = Figure(figsize=(6.0, 5.0), dpi=dpi)
    ax = fig.add_subplot()
    if labels is not None and labels.dtype.kind in "iu":
        cmap = matplotlib.colormaps["tab10" if labels.max(initial=0) < 10 else "tab20"]
        for c in np.unique(labels):
            pick = labels == c
            name = names[c] if names is not None and c < len(names) else c
            ax.scatter(xy[pick, 0], xy[pick, 1], s=6, color=cmap(int(c) % cmap.N), label=str(name))
        ax.legend(markerscale=2, fontsize="small", loc="best")
    elif labels is not None:
        points = ax.scatter(xy[:, 0], xy[:, 1], s=6, c=np.asarray(labels, dtype=np.float64).reshape(len(xy), -1)[:, 0])
        fig.colorbar(points, ax=ax)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(out, lambda f: f.write(buf.getvalue()))
    return ", ".join(a for a in axes if a)
