"""`numclip predict` streams: paths are read lazily, predicted one batch at a time and written row by
row, so memory does not grow with the number of images (benchmarks/predict_memory.py measures it).

A tiny random-init model (numclip-tiny, 5 ranks) and a few 32x32 PNGs keep this to a few seconds.
"""

import csv
import weakref
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from numclip.cli import main
from numclip.commands.predict import (
    Prediction,
    Predictor,
    collect_images,
    iter_images,
    write_predictions,
)
from numclip.config import load_params
from numclip.core.errors import NumclipError
from numclip.data.sources import IMAGE_EXTENSIONS
from numclip.models.ordinal import build_model, save_model

K = 5


@pytest.fixture(scope="module")
def model_file(tiny_backbone, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "coop.safetensors"
    save_model(build_model(load_params(None, [f"data.num_ranks={K}"]), "coop", tiny_backbone).eval(), path)
    return path


@pytest.fixture(scope="module")
def predictor(model_file) -> Predictor:
    return Predictor(model_file)


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    return [_png(folder / f"img{i:02d}.png", i) for i in range(10)]


class Counting:
    """An iterator over `items` that counts how many were pulled."""

    def __init__(self, items: list[Path]) -> None:
        self.items, self.pulled = items, 0

    def __iter__(self) -> Iterator[Path]:
        for item in self.items:
            self.pulled += 1
            yield item


def test_iter_predict_reads_at_most_one_batch_ahead(predictor, images, tmp_path):
    paths = images[:4] + [tmp_path / "missing.png"] + images[4:]
    source = Counting(paths)
    stream = predictor.iter_predict(source, batch_size=3)
    assert source.pulled == 0, "nothing is read before the first prediction is asked for"
    first = next(stream)
    assert source.pulled <= 3
    rest = list(stream)
    assert source.pulled == len(paths)
    streamed = [first, *rest]
    listed = predictor.predict(paths, batch_size=3)
    assert [p.path for p in streamed] == [p.path for p in listed] == [str(p) for p in paths]
    assert [p.rank for p in streamed] == [p.rank for p in listed]
    for a, b in zip(streamed, listed):
        assert a.error == b.error
        assert a.probabilities == (None if b.probabilities is None else pytest.approx(b.probabilities, abs=1e-6))
    assert "cannot read image" in streamed[4].error and streamed[4].rank is None


def _header() -> list[str]:
    return ["path", "rank", "expectation", "median", "lo", "hi", *[f"p_{k}" for k in range(K)], "error"]


def test_write_predictions_streams_rows_and_counts(tmp_path):
    n = 500
    alive: list[weakref.ref] = []

    def generate() -> Iterator[Prediction]:
        for i in range(n):  # the writer's loop variable still holds row i-1; row i-2 must be gone
            assert i < 2 or alive[i - 2]() is None, "rows already written are not kept"
            p = (Prediction(f"bad{i}.png", error=f"cannot read image bad{i}.png") if i % 100 == 7
                 else Prediction(f"img{i}.png", i % K, i % K + 0.25, [1.0 / K] * K, median=2, lo=1, hi=3))
            alive.append(weakref.ref(p))
            yield p

    out = tmp_path / "pred.csv"
    counts = write_predictions(generate(), out, K)
    assert (counts.predicted, counts.failed, counts.first_error) == (n - 5, 5, "cannot read image bad7.png")
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == _header() and len(rows) == n + 1
    assert rows[1] == ["img0.png", "0", "0.2500", "2", "1", "3", *["0.200000"] * K, ""]
    assert rows[8] == ["bad7.png", "", "", "", "", "", *[""] * K, "cannot read image bad7.png"]
    assert b"\r" not in out.read_bytes()


def test_write_predictions_keeps_the_old_file_when_the_stream_fails(tmp_path):
    out = tmp_path / "pred.csv"
    out.write_text("old\n")

    def failing() -> Iterator[Prediction]:
        for i in range(3):
            yield Prediction(f"img{i}.png", 0, 0.0, [1.0 / K] * K)
        raise RuntimeError("interrupted mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        write_predictions(failing(), out, K)
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"], "no temporary file is left behind"


def test_iter_images_is_lazy_and_keeps_the_sorted_order(tmp_path):
    root = tmp_path / "tree"
    for rel in ("b.png", "b/c.png", "a/z.jpg", "a/notes.txt", "B/x.PNG", "b/d/e.webp"):
        _png(root / rel, 0) if Path(rel).suffix.lower() in IMAGE_EXTENSIONS else (root / rel).write_text("x")
    expected = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)  # the old order
    assert list(iter_images([root])) == expected == collect_images([root])

    listing = tmp_path / "list.txt"
    listing.write_text("# header\nimg0.png 3\n\n/abs/img1.png\nsub/img2.png extra\n")
    stream = iter_images([listing, root / "b.png"])
    assert not isinstance(stream, list)
    assert list(stream) == [tmp_path / "img0.png", Path("/abs/img1.png"), tmp_path / "sub/img2.png", root / "b.png"]


def test_iter_images_checks_inputs_before_streaming(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "comments.txt").write_text("# nothing\n\n")
    with pytest.raises(NumclipError, match="no images found in"):
        iter_images([tmp_path / "empty", tmp_path / "comments.txt"])
    with pytest.raises(NumclipError, match="predict input not found or not an image, folder or list file"):
        iter_images([tmp_path / "comments.txt", tmp_path / "nowhere"])


def test_predict_cli_streams_a_list_file(model_file, images, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in images[:5]) + "broken.png\n" + "".join(f"{p}\n" for p in images[5:]))
    params = tmp_path / "params.yaml"
    params.write_text("")  # all defaults, whatever the repository's params.yaml says
    out = tmp_path / "pred.csv"
    code = main(["predict", str(listing), "--model", str(model_file), "--out", str(out),
                 "--params", str(params), "--set", "predict.batch_size=4"])
    assert code == 0
    captured = capsys.readouterr()
    assert f"predicted {len(images)} images -> {out}" in captured.out
    assert "1 images could not be read" in captured.err and "broken.png" in captured.err
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["path"] for r in rows] == [str(p) for p in images[:5]] + [str(broken)] + [str(p) for p in images[5:]]
    assert rows[5]["error"] and rows[5]["rank"] == ""
    good = [r for r in rows if not r["error"]]
    assert all(0 <= int(r["rank"]) < K for r in good)
    assert all(abs(sum(float(r[f"p_{k}"]) for k in range(K)) - 1) < 1e-4 for r in good)
