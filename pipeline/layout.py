"""Where each stage reads and writes; dvc.yaml names the same paths."""

from pathlib import Path

from convvae.files import THRESHOLD_FILE, ClassFiles

PARAMS = Path("params.yaml")
PREPARED_SPLITS = Path("data/prepared/splits.npz")
MANIFEST = Path("data/prepared/manifest.json")
MODEL = Path("models/model.pt")
MODEL_THRESHOLD = MODEL.with_name(THRESHOLD_FILE)
# Outside DVC's outputs (which DVC deletes before a stage runs), so an interrupted run resumes.
TRAIN_CHECKPOINT = Path("checkpoints/train.pt")
TRAIN_METRICS = Path("metrics/train.json")
LOSS_CURVE = Path("plots/train/loss.csv")
EVALUATE_METRICS = Path("metrics/evaluate.json")
EVALUATE_PLOTS = Path("plots/evaluate")
# The MLflow run that holds this model's story; evaluate logs into it.
MLFLOW_RUN = Path("models/mlflow_run.json")
# Beside the checkpoint: the run to continue when an interrupted train stage is re-run.
TRAIN_CHECKPOINT_RUN = Path("checkpoints/train.mlflow_run")
# Generation, compression and imputation measured on the test split (README: the other uses).
USES_METRICS = Path("metrics/uses.json")
RATE_DISTORTION = EVALUATE_PLOTS / "rate_distortion.csv"
# The one-class anomaly benchmark: per normal class c, then the report over all classes.
ANOMALY_MODELS = Path("models/anomaly")
BENCHMARK_METRICS = Path("metrics/benchmark")
BENCHMARK_PLOTS = Path("plots/benchmark")
BENCHMARK_SUMMARY = Path("metrics/benchmark_summary.json")
ANOMALY_REPORT = Path("reports/anomaly.md")
ANOMALY_ROC_PNG = Path("reports/anomaly_roc.png")
ANOMALY_METHODS_PNG = Path("reports/anomaly_methods.png")


def class_files(normal_class: int) -> ClassFiles:
    """The outputs of stage benchmark@<normal_class>."""
    model_dir = ANOMALY_MODELS / f"class_{normal_class}"
    return ClassFiles(
        model=model_dir / "model.pt",
        threshold=model_dir / THRESHOLD_FILE,
        metrics=BENCHMARK_METRICS / f"class_{normal_class}.json",
        roc=BENCHMARK_PLOTS / f"roc_class_{normal_class}.json",
    )
