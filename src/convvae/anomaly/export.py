"""ONNX export of a model's anomaly score and map: `convvae export --format onnx`.

The graph is ``convvae.anomaly.scorer.Scorer`` itself, exported: it takes ``pixels``, float32
(N, C, H, W) in [0, 1] (N dynamic), and returns ``score``, float32 (N,), the score its spec
names, and ``anomaly_map``, float32 (N, H, W), the smoothed default map. The posterior noise
and the reference banks are constants, so a threshold calibrated in Python holds for the graph.

Memory grows with N: the graph decodes N * (samples + 1) codes and compares every patch feature
of the N images with the patch bank at once (the distances alone take H' * W' * 8 kB per image,
134 MB at 256x256), so callers feed it batches that fit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from convvae.anomaly.scorer import Scorer
from convvae.runtime.files import atomic_path

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("score", "anomaly_map")


def export_onnx(scorer: Scorer, out: Path, opset: int | None = None) -> None:
    """Write ``scorer`` (score and map) as an ONNX graph at ``out``, atomically (a killed
    export never leaves half a file). ``opset``: the ONNX opset, default the exporter's."""
    example = torch.rand(2, *scorer.model.arch.image_shape)
    with torch.no_grad():
        scorer.eval()(example)  # builds the reference banks the graph holds as constants
        # strict (TorchDynamo) tracing keeps the batch size symbolic; the default non-strict
        # trace would fix it to the example's.
        program = torch.export.export(
            scorer.eval(),
            (example,),
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("n")}},
            strict=True,
        )
        onnx_program = torch.onnx.export(
            program,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamo=True,
            custom_translation_table=_translations(),
            verbose=False,
        )
    with atomic_path(out) as tmp:
        onnx_program.save(tmp, external_data=False)


def _translations() -> dict[Callable, Callable]:
    """ONNX translations that replace onnxscript's where they lose precision. Its log_sigmoid,
    through which the Bernoulli NLL (binary_cross_entropy_with_logits) goes, is Log(Sigmoid(x)):
    -inf once the sigmoid underflows (an infinite neg_elbo) and, in ONNX Runtime, up to 0.03
    nats per pixel off on a trained digit model."""
    from onnxscript import opset18 as op

    def log_sigmoid(x):  # -softplus(-x), which ONNX Runtime computes stably
        return op.Neg(op.Softplus(op.Neg(x)))

    return {torch.ops.aten.log_sigmoid.default: log_sigmoid}
