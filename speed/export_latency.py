"""Latency of the exported ONNX graph against PyTorch for the same work: the pipeline model's
stored score and its anomaly map for 256 test images, at 1 and 2 threads.

    .venv/bin/python speed/export_latency.py   # after `dvc repro` (models/model.onnx)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from convvae.anomaly.detector import load_detector  # noqa: E402
from convvae.anomaly.scoring import score_and_map  # noqa: E402

IMAGES = 256


def best_of(run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    scorer = load_detector(REPO / "models/model.pt").scorer
    spec = scorer.spec
    images = np.load(REPO / "data/prepared/splits.npz")["test_images"][:IMAGES]
    pixels = images.astype(np.float32) / 255
    print(f"{IMAGES} images {images.shape[1:]}, score {spec.name} (k={spec.samples}) + map")
    print(f"{'threads':>8}{'PyTorch s':>12}{'ONNX Runtime s':>16}{'speed-up':>10}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(
            str(REPO / "models/model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        torch_s = best_of(lambda: score_and_map(scorer, images, (spec.name,)))
        onnx_s = best_of(lambda s=session: s.run(None, {"pixels": pixels}))
        print(f"{threads:>8}{torch_s:>12.2f}{onnx_s:>16.2f}{torch_s / onnx_s:>10.2f}")


if __name__ == "__main__":
    main()
