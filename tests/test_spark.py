"""Batch scoring on Spark (local mode): a registered version over a folder of image files,
through MLflow's spark_udf, gives the scores `convvae score` gives. Needs Java (Debian's
default-jre-headless, which `make test` installs as root); without it the test skips, except
in CI where it fails."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

from convvae.data.images import save_png
from tests.test_cli import convvae
from tests.test_cli_score import read_rows


@pytest.fixture(scope="module")
def spark():
    if shutil.which("java") is None:
        if os.environ.get("CI"):
            pytest.fail("Java is missing: `make test` installs Debian's default-jre-headless")
        pytest.skip("Java not installed (apt-get install default-jre-headless)")
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers run this venv's convvae
    session = (
        SparkSession.builder.master("local[1]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    yield session
    session.stop()


def test_a_registered_version_scores_a_folder_on_spark_as_convvae_score_does(
    spark, one_class_model, local_tracker, mnist_slice, tmp_path
):
    from convvae.anomaly.thresholds import THRESHOLD_TAG
    from convvae.model.files import load_model
    from convvae.tracking.batch import score_files_on_spark

    record = one_class_model.with_name("threshold.json").read_text()
    example = mnist_slice.test.images[:2].astype(np.float32) / 255
    with local_tracker.run():
        version = local_tracker.log_model(
            load_model(one_class_model), one_class_model, example, "convvae-spark",
            {THRESHOLD_TAG: record}, json.loads(record),
        )  # fmt: skip
    local_tracker.registry.set_alias("convvae-spark", "champion", version)
    folder = tmp_path / "incoming" / "line_1"  # a nested folder: Spark looks under it too
    noise = np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    for i, image in enumerate([*mnist_slice.test.images[:6], *noise]):
        save_png(image, folder / f"part_{i}.png")

    uri = "models:/convvae-spark@champion"
    out = tmp_path / "scores.csv"
    done = convvae("score", "--model", uri, str(folder), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = {row["file"]: row for row in read_rows(out)}

    found = score_files_on_spark(spark, uri, str(tmp_path / "incoming")).toPandas()
    assert len(found) == len(expected) == 8
    for path, score, p_value, is_anomaly in found.itertuples(index=False):
        row = expected[path.rsplit("/", 1)[1]]
        # The CSV holds 4 decimals: equal to them, and to 1e-5 of the score's size.
        assert score == pytest.approx(float(row["score"]), rel=1e-5, abs=5e-5)
        assert p_value == pytest.approx(float(row["p_value"]), abs=5e-5)
        assert int(is_anomaly) == int(row["is_anomaly"])
    assert found["is_anomaly"].sum() >= 2  # the noise images at least are flagged
