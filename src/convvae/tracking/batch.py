"""Batch scoring on Spark: a registered model over image files, through MLflow's ``spark_udf``.

Why Spark: it is the engine a team with a data lake most often already runs (Databricks, EMR,
Dataproc, a YARN or Kubernetes cluster), it reads the files where they lie (local, HDFS, S3,
ADLS, through ``binaryFile``), and MLflow's ``spark_udf`` is how MLflow itself scores a
registered model on it, with no serving endpoint to size. Each executor loads the version once
per Python worker through the installed convvae (never code from the artifact store,
``convvae.serving``), and scores Arrow batches of rows.

Files are decoded by the same code as ``convvae score`` (``convvae.data.image_files``): the
same formats, size checks, grey/RGB rules and ``--resize``, so a file gets the score it gets
there. The cluster recipe: docs/anomaly-detection.md#batch-scoring-on-spark.
"""

from __future__ import annotations

import numpy as np
import pandas as pd  # module level: Spark reads the pandas UDF's type hints from here

from convvae.data.image_files import Resize, file_bytes_pixels

# What the served model returns per image (convvae.serving.ScoringModel.predict).
RESULT_TYPE = "score double, p_value double, is_anomaly boolean"


def model_image_shape(model_uri: str) -> tuple[int, int, int]:
    """The (C, H, W) a registered model scores, from its signature (nothing is loaded)."""
    import mlflow

    signature = mlflow.models.get_model_info(model_uri).signature
    shape = signature.inputs.inputs[0].shape  # (-1, C, H, W)
    return tuple(int(size) for size in shape[1:])


def score_files_on_spark(spark, model_uri: str, files: str, resize: Resize | None = None):
    """A Spark DataFrame (path, score, p_value, is_anomaly): every image file under ``files``
    (a folder or a glob Spark reads: ``file:///data/parts``, ``s3a://bucket/parts/*.png``)
    scored by ``model_uri`` (``models:/NAME@champion``). Lazy, as Spark is: nothing runs until
    the result is written or collected."""
    import mlflow
    from pyspark.sql.functions import pandas_udf

    shape = model_image_shape(model_uri)

    @pandas_udf("array<float>")
    def pixels(content: pd.Series, path: pd.Series) -> pd.Series:
        return pd.Series(
            [
                (file_bytes_pixels(data, name, shape, resize).astype(np.float32) / 255).ravel()
                for data, name in zip(content, path, strict=True)
            ]
        )

    model = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=RESULT_TYPE, env_manager="local")
    # Every file is decoded: one that is no image fails the job naming it, as `convvae score`
    # refuses it (Spark skips hidden files, as convvae score does).
    found = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(files)
    scored = found.select("path", model(pixels("content", "path")).alias("scored"))
    return scored.select("path", "scored.score", "scored.p_value", "scored.is_anomaly")
