"""Where each stage reads and writes; dvc.yaml names the same paths."""

from pathlib import Path

from convvae.runtime.files import THRESHOLD_FILE, ClassFiles

PARAMS = Path("params.yaml")
# The data source's file list (sizes, times): prepare's dep, so changed images re-run it.
SOURCE_FINGERPRINT = Path("data/source.json")
PREPARED_SPLITS = Path("data/prepared/splits.npz")
MANIFEST = Path("data/prepared/manifest.json")
MODEL = Path("models/model.pt")
MODEL_THRESHOLD = MODEL.with_name(THRESHOLD_FILE)
# The same score and map as an ONNX graph (convvae export), for runtimes without PyTorch.
MODEL_ONNX = MODEL.with_suffix(".onnx")
# What the model flags, what its threshold promises, and which data chose its defaults.
MODEL_CARD = MODEL.with_name("model_card.md")
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
# Generation, compression and imputation measured on the test split (docs/uses.md).
USES_METRICS = Path("metrics/uses.json")
RATE_DISTORTION = EVALUATE_PLOTS / "rate_distortion.csv"
# Image and pixel anomaly metrics against a folder's defects (a note for the class sources).
DEFECT_METRICS = Path("metrics/defects.json")
ANOMALY_MAPS_PNG = EVALUATE_PLOTS / "anomaly_maps.png"
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
        replicates=model_dir / "auc_replicates.npz",
        metrics=BENCHMARK_METRICS / f"class_{normal_class}.json",
        roc=BENCHMARK_PLOTS / f"roc_class_{normal_class}.json",
    )
