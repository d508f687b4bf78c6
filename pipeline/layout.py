"""Where each stage reads and writes; dvc.yaml names the same paths."""

from pathlib import Path

PARAMS = Path("params.yaml")
PREPARED_SPLITS = Path("data/prepared/splits.npz")
MANIFEST = Path("data/prepared/manifest.json")
MODEL = Path("models/model.pt")
# Outside DVC's outputs (which DVC deletes before a stage runs), so an interrupted run resumes.
TRAIN_CHECKPOINT = Path("checkpoints/train.pt")
TRAIN_METRICS = Path("metrics/train.json")
LOSS_CURVE = Path("plots/train/loss.csv")
EVALUATE_METRICS = Path("metrics/evaluate.json")
EVALUATE_PLOTS = Path("plots/evaluate")
