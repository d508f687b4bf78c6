"""`convvae score`: PNGs or an array → a CSV of scores, flagged at the stored threshold."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convvae.data.images import save_png
from tests.test_cli import COMMAND, assert_one_line_error, convvae


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_scores_a_png_folder_and_flags_above_the_threshold(one_class_model, mnist_slice, tmp_path):
    images = mnist_slice.test.images[:6]
    folder = tmp_path / "pngs"
    for i, image in enumerate(images):
        save_png(image, folder / f"digit_{i}.png")
    out = tmp_path / "scores.csv"
    result = convvae("score", "--model", str(one_class_model), str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "6 images scored (neg_elbo" in result.stdout
    rows = read_rows(out)
    assert [row["file"] for row in rows] == [f"digit_{i}.png" for i in range(6)]
    record = json.loads(one_class_model.with_name("threshold.json").read_text())
    calibration = np.array(record["calibration_scores"])
    for row in rows:
        score = float(row["score"])
        assert row["is_anomaly"] == str(int(score > record["threshold"]))
        # The conformal p-value: the share of calibration images scoring at least as high.
        expected = (1 + np.sum(calibration >= score)) / (len(calibration) + 1)
        assert float(row["p_value"]) == pytest.approx(expected, abs=1e-4)
        assert row["normalized_score"] == row["p_value"]  # the old column, for one release
    # The same images as an array give the same scores (no dependence on the batch or format).
    np.save(tmp_path / "digits.npy", images)
    again = convvae("score", "--model", str(one_class_model), str(tmp_path / "digits.npy"))
    assert again.returncode == 0, again.stderr
    array_rows = list(csv.DictReader(again.stdout.splitlines()))
    assert [row["score"] for row in array_rows] == [row["score"] for row in rows]
    assert array_rows[0]["file"] == "digits.npy[0]"
    # The CSV is never replaced silently; --overwrite replaces it.
    again = convvae("score", "--model", str(one_class_model), str(folder), "--out", str(out))
    assert f"{out} exists; pass --overwrite" in assert_one_line_error(again)
    forced = ("score", "--model", str(one_class_model), str(folder), "--out", str(out))
    assert convvae(*forced, "--overwrite").returncode == 0


def test_file_names_reach_the_csv_as_text_a_spreadsheet_will_not_run(
    one_class_model, mnist_slice, tmp_path
):
    folder = tmp_path / "pngs"
    names = ['=HYPERLINK("x")', "+1", "-1", "@SUM(A1)", "ok=1"]
    for name, image in zip(names, mnist_slice.test.images, strict=False):
        save_png(image, folder / f"{name}.png")
    out = tmp_path / "scores.csv"
    result = convvae("score", "--model", str(one_class_model), str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    files = sorted(row["file"] for row in read_rows(out))
    assert files == sorted(["'" + name + ".png" for name in names[:4]] + ["ok=1.png"])


def test_a_model_without_threshold_file_is_one_line(one_class_model, tmp_path):
    lonely = tmp_path / "model.pt"
    lonely.write_bytes(one_class_model.read_bytes())
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    line = assert_one_line_error(convvae("score", "--model", str(lonely), str(tmp_path / "x.npy")))
    assert "threshold.json" in line and "models:/" in line


def test_images_of_the_wrong_size_are_one_line(one_class_model, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((2, 32, 32), np.uint8))
    line = assert_one_line_error(
        convvae("score", "--model", str(one_class_model), str(tmp_path / "big.npy"))
    )
    assert "(2, 1, 32, 32)" in line and "resized" in line


def test_a_registered_version_scores_with_its_tagged_threshold(
    one_class_model, local_tracker, mnist_slice, tmp_path
):
    """models:/NAME@alias reads the weights and the threshold from the registry, and scores the
    same as the local file; a version without the tag and an unknown alias are one line."""
    from convvae.anomaly.thresholds import THRESHOLD_TAG
    from convvae.model.files import load_model

    record = one_class_model.with_name("threshold.json").read_text()
    example = mnist_slice.test.images[:2].astype(np.float32) / 255
    model = load_model(one_class_model)
    with local_tracker.run():
        tagged = local_tracker.log_model(
            model, one_class_model, example, "convvae-scorer", {THRESHOLD_TAG: record},
            json.loads(record),
        )  # fmt: skip
        untagged = local_tracker.log_model(model, one_class_model, example, "convvae-scorer", {})
    local_tracker.registry.set_alias("convvae-scorer", "champion", tagged)
    np.save(tmp_path / "digits.npy", mnist_slice.test.images[:5])
    images = str(tmp_path / "digits.npy")

    registry = convvae("score", "--model", "models:/convvae-scorer@champion", images, cwd=tmp_path)
    local = convvae("score", "--model", str(one_class_model), images)
    assert registry.returncode == 0, registry.stderr
    assert registry.stdout == local.stdout and len(registry.stdout.splitlines()) == 6
    # The downloaded version is removed when the command ends (MLflow's default keeps it).
    downloads = tmp_path / "tmpdir"
    downloads.mkdir()
    again = subprocess.run(
        [*COMMAND, "score", "--model", "models:/convvae-scorer@champion", images], cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(downloads)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and again.stdout == local.stdout, again.stderr
    assert list(downloads.iterdir()) == []

    line = assert_one_line_error(
        convvae("score", "--model", f"models:/convvae-scorer/{untagged}", images, cwd=tmp_path)
    )
    assert THRESHOLD_TAG in line and "dvc repro -f evaluate" in line
    line = assert_one_line_error(
        convvae("score", "--model", "models:/convvae-scorer@best", images, cwd=tmp_path)
    )
    assert "no such alias" in line and "@champion" in line
    # Another project whose params.yaml names this store (tracking.uri): the CLI reads it, as
    # the stages and `promote` do, instead of a store of its own in that folder.
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(f"tracking:\n  uri: sqlite:///{tmp_path}/mlflow.db\n")
    found = convvae("score", "--model", "models:/convvae-scorer@champion", images, cwd=project)
    assert found.returncode == 0, found.stderr
    assert found.stdout == local.stdout and not (project / "mlflow.db").exists()
    other = tmp_path / "other"
    other.mkdir()
    elsewhere = convvae("score", "--model", "models:/convvae-scorer@champion", images,
                        "--params", str(project / "params.yaml"), cwd=other)  # fmt: skip
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert not (other / "mlflow.db").exists()


def test_maps_that_would_overwrite_each_other_are_refused_before_scoring(
    one_class_model, mnist_slice, tmp_path
):
    folder, maps = tmp_path / "pngs", tmp_path / "maps"
    save_png(mnist_slice.test.images[0], folder / "a.png")
    image = mnist_slice.test.images[1][0]
    folder.mkdir(exist_ok=True)
    Image.fromarray(image, mode="L").save(folder / "a.bmp")
    line = assert_one_line_error(
        convvae("score", "--model", str(one_class_model), str(folder), "--maps", str(maps))
    )
    assert "a.bmp and a.png would both write a_map.png and a_map.npy; rename one" in line
    assert not maps.exists()  # refused before any work
    scored = convvae("score", "--model", str(one_class_model), str(folder))
    assert scored.returncode == 0, scored.stderr  # without --maps the names do not matter
