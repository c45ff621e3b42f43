"""Figures render for small and large K and save as valid PNGs."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from numclip.evaluation.metrics import ordinal_metrics, similarity_matrix
from numclip.evaluation.plots import confusion_figure, per_rank_error_figure, save_figure, similarity_figure


def _assert_png(path):
    assert path.exists() and path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 300
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


@pytest.mark.parametrize("k", [5, 101])
def test_figures_render_and_save(tmp_path, k):
    rng = np.random.default_rng(k)
    target = rng.integers(0, k, size=400)
    target[target == 1] = 0  # leave rank 1 without samples
    argmax = np.clip(target + rng.integers(-1, 2, size=target.size), 0, k - 1)
    metrics = ordinal_metrics(target, argmax, argmax.astype(float), num_ranks=k)
    angles = np.linspace(0, np.pi / 2, k)
    similarity = similarity_matrix(np.stack([np.cos(angles), np.sin(angles)], axis=1))

    figures = {
        "confusion": confusion_figure(metrics["confusion"]),
        "per_rank": per_rank_error_figure(metrics["per_rank_mae"], metrics["per_rank_count"]),
        "per_rank_no_counts": per_rank_error_figure(metrics["per_rank_mae"]),
        "similarity": similarity_figure(similarity, title="test prototypes"),
    }
    for name, fig in figures.items():
        assert fig.axes, "builders return a drawn figure"
        path = tmp_path / name / f"{name}.png"
        save_figure(fig, path)
        _assert_png(path)
    assert plt.get_fignums() == [], "figures are built without pyplot: none is left registered"


def test_confusion_labels_and_shape_checks(tmp_path):
    fig = confusion_figure([[3, 1], [0, 4]], labels=["young", "old"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["young", "old"]
    save_figure(fig, tmp_path / "c.png")
    with pytest.raises(ValueError):
        confusion_figure([[1, 2, 3]])
    with pytest.raises(ValueError):
        confusion_figure([[1, 0], [0, 1]], labels=["a"])
    with pytest.raises(ValueError):
        per_rank_error_figure([1.0, 2.0], per_rank_count=[1])
    assert plt.get_fignums() == [], "no pyplot figure is ever opened"
