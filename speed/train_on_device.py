"""The pipeline's main model trained on a chosen device, for comparing a GPU's bf16 training
with the CPU's committed figures (metrics/train.json, metrics/evaluate.json).

Run: ``.venv/bin/python speed/train_on_device.py --device cuda [--epochs N]``. It loads and
splits the data as the ``prepare`` stage does (``load_configured``), trains with params.yaml's
settings through ``train_and_fit`` (the ``train`` stage's function; ``Trainer`` runs under bf16
autocast on a GPU), and prints the best validation loss, the seconds, and the test split's
negative ELBO, scored on the CPU by ``evaluate``'s own ``likelihood_metrics``. No MLflow; no
files beside a checkpoint in a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from convvae.anomaly.fit import train_and_fit
from convvae.config import load_params
from convvae.data.splits import load_configured
from convvae.runtime.allocator import keep_freed_memory
from convvae.training.history import training_metrics
from convvae.uses.evaluation import likelihood_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--epochs", type=int, help="instead of params.yaml's train.epochs")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here; use --device cpu")
    keep_freed_memory()
    params = load_params(args.params)
    train_cfg = dataclasses.replace(params.train, device=args.device)
    if args.epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, epochs=args.epochs)
    params = dataclasses.replace(params, train=train_cfg)
    _, splits = load_configured(params.data)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        result = train_and_fit(
            params.model,
            params.train,
            params.anomaly,
            splits.train.images,
            splits.val.images,
            checkpoint_path=Path(folder) / "checkpoint.pt",
        ).training
    seconds = time.perf_counter() - started
    metrics = training_metrics(result)
    test = splits.test.images
    likelihood = likelihood_metrics(
        result.model, test, params.evaluate.iwae_samples, params.evaluate.seed
    )
    print(
        f"{args.device}: {metrics['epochs_run']} epochs; train_and_fit (fit, then the anomaly "
        f"reference on the CPU) {seconds:.1f} s, of it training {metrics['train_seconds']:.1f} "
        f"s at {metrics['images_per_s']:.0f} img/s; best "
        f"validation loss {metrics['best_val_loss']:.2f} at epoch {metrics['best_epoch']}; "
        f"test -ELBO {likelihood['test_neg_elbo']:.2f}, IWAE NLL "
        f"{likelihood['test_iwae_nll']:.2f} nats/image ({len(test)} images, "
        f"{likelihood['iwae_samples']} samples, scored on the CPU)"
    )


if __name__ == "__main__":
    main()
