"""ONNX export of a ConvVAE's anomaly score and anomaly map: `convvae export --format onnx`.

The graph takes ``pixels``, float32 (N, C, H, W) in [0, 1] (N dynamic), and returns ``score``,
float32 (N,): the score a ``ScoreSpec`` names, as ``convvae.anomaly.scores.score_images`` computes
it,
and ``anomaly_map``, float32 (N, H, W): ``convvae.anomaly.maps.smoothed_maps`` (its default map).
It is
the package's computation, not an approximation of it, so that a threshold calibrated in Python
holds for the exported graph: the same rounding of the pixels to 8 bits, the same posterior
noise (a constant), the reference banks as constants, distances in float64 where the package
takes them in float64, and the package's own torch code for the model's terms.

Memory grows with N: the graph decodes N * (samples + 1) codes and compares every patch feature
of the N images with the feature bank at once (about 6 MB per default 28x28 image, 1.6 GB peak
for 256; the distances alone take H' * W' * 8 kB per image, 134 MB at 256x256), so callers feed
it batches that fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from convvae.anomaly.maps import _feature_bank, map_sigma
from convvae.anomaly.scores import (
    FUSED_COMPONENTS,
    KNN_NEIGHBOURS,
    LIKELIHOOD_SCORES,
    ScoreSpec,
    _batch_scores,
    _reference_banks,
    require_reference,
)
from convvae.errors import ConfigError
from convvae.model.likelihood import pixel_floor
from convvae.model.vae import ConvVAE
from convvae.runtime.files import atomic_path

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("score", "anomaly_map")
# The scores compared with the Reference's images, and every score the graph computes.
_DISTANCE_SCORES = ("hidden_knn", "cosine_knn", "fused")
EXPORTABLE_SCORES = (*LIKELIHOOD_SCORES, *_DISTANCE_SCORES, "patch_knn")
# Feature-bank rows compared with all queries at once: bounds the (N * H' * W', rows) float64
# distance matrix the runtime holds (411 MB for 256 default 28x28 images; 1.6 GB peak in all).
_BANK_CHUNK = 1024


def export_onnx(model: ConvVAE, spec: ScoreSpec, out: Path, opset: int | None = None) -> None:
    """Write ``model``'s score ``spec`` and its smoothed default anomaly map as an ONNX graph
    at ``out``, atomically (a killed export never leaves half a file). ``opset``: the ONNX
    opset to target, default the exporter's."""
    graph = ScoreGraph(model, spec).eval()
    example = torch.rand(2, *model.arch.image_shape)
    with torch.no_grad():
        # strict (TorchDynamo) tracing keeps len(x) in _batch_scores symbolic; the default
        # non-strict trace would fix the batch size to the example's.
        program = torch.export.export(
            graph, (example,), dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("n")}}, strict=True
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


class ScoreGraph(nn.Module):
    """pixels → (score, anomaly_map): what ``export_onnx`` exports; runs in torch too."""

    def __init__(self, model: ConvVAE, spec: ScoreSpec) -> None:
        super().__init__()
        _check_spec(model, spec)
        self.model = model.eval()
        self.spec = spec
        eps = torch.randn(
            spec.samples,
            model.arch.latent_dim,
            generator=torch.Generator().manual_seed(spec.noise_seed),
        )
        self.register_buffer("eps", eps)
        self.register_buffer("log_q_eps", -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(1))
        reference = model.reference
        if reference is not None:  # maps.anomaly_maps' default: feature_knn where it can
            self.patch_search = NearestDistance(_feature_bank(model))
        if spec.name in _DISTANCE_SCORES:
            hidden_bank, unit_bank = _reference_banks(model, reference)
            # As the package holds them; the distances cast as the package's do.
            self.register_buffer("hidden_bank", hidden_bank)
            self.register_buffer("unit_bank", unit_bank)
        if spec.name == "fused":
            self.center = {name: reference.center[name] for name in FUSED_COMPONENTS}
            self.scale = {name: reference.scale[name] for name in FUSED_COMPONENTS}
        sigma = map_sigma(model.arch.image_size)
        self.register_buffer("blur_rows", blur_matrix(model.arch.image_size[0], sigma))
        self.register_buffer("blur_cols", blur_matrix(model.arch.image_size[1], sigma).T.clone())

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = quantise(pixels)
        maps = self.anomaly_map(x)
        if self.spec.name == "patch_knn":  # anomaly.patch_knn_score: the map's largest value
            return maps.flatten(1).amax(1), maps
        return self.score(x).float(), maps

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The spec's score, float64 (N,), of quantised pixels ``x``."""
        name = self.spec.name
        terms = _batch_scores(self.model, x, self.eps, self.log_q_eps)
        if name in LIKELIHOOD_SCORES:
            return terms[name]
        components = {
            "excess_nll": terms["excess_nll"],
            "hidden_knn": knn_distance(self.model.encoder(x), self.hidden_bank),
            "cosine_knn": knn_distance(unit_pixels(x), self.unit_bank),
        }
        if name != "fused":
            return components[name]
        standardised = [(components[c] - self.center[c]) / self.scale[c] for c in FUSED_COMPONENTS]
        return torch.stack(standardised).mean(0)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """The smoothed default map, float32 (N, H, W), of quantised pixels ``x``."""
        if self.model.reference is None:
            maps = deviance_map(self.model, x)
        else:
            maps = feature_knn_map(self.model, x, self.patch_search)
        return self.blur_rows @ maps @ self.blur_cols


def _check_spec(model: ConvVAE, spec: ScoreSpec) -> None:
    if spec.name not in EXPORTABLE_SCORES:
        raise ConfigError(
            f"score {spec.name!r} cannot be exported; one of {', '.join(EXPORTABLE_SCORES)}"
        )
    if spec.samples < 1:
        raise ConfigError(f"the score's samples must be >= 1, got {spec.samples}")
    if spec.name not in LIKELIHOOD_SCORES:
        require_reference(model, f"the {spec.name} score")


def quantise(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels rounded to the nearest of the 256 grey levels, as ``as_uint8_images`` then
    ``to_unit_interval`` do: every scoring path sees 8-bit images."""
    return torch.round(pixels.float().clamp(0, 1) * 255) / 255


def unit_pixels(x: torch.Tensor) -> torch.Tensor:
    """``convvae.anomaly.scores.unit_pixels`` of quantised pixels, in torch: (N, C*H*W)."""
    flat = x.flatten(1)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-8)


def knn_distance(
    queries: torch.Tensor, bank: torch.Tensor, k: int = KNN_NEIGHBOURS
) -> torch.Tensor:
    """``convvae.anomaly.scores.knn_distance`` in torch, float64 (N,): squared distances by the
    matrix
    product (as torch.cdist takes them), in float64 so that cancellation loses nothing."""
    k = min(k, len(bank))
    q, bank = queries.double(), bank.double()
    squared = q.pow(2).sum(1, keepdim=True) - 2 * q @ bank.T + bank.pow(2).sum(1)
    return squared.topk(k, dim=1, largest=False).values[:, -1].clamp_min(0).sqrt()


def deviance_map(model: ConvVAE, x: torch.Tensor) -> torch.Tensor:
    """``convvae.anomaly.maps.deviance_maps`` in torch: per-pixel deviance summed over channels."""
    mu, _ = model.encode(x)
    deviance = model.pixel_nll(model.decode(mu), x) - pixel_floor(model.arch.likelihood, x)
    return deviance.sum(1).clamp_min(0)


def feature_knn_map(model: ConvVAE, x: torch.Tensor, search: NearestDistance) -> torch.Tensor:
    """``convvae.anomaly.maps.feature_knn_maps`` in torch: each patch feature's distance to its
    nearest
    feature bank row (float64), upsampled bilinearly to the image size."""
    features = model.encoder[:2](x)  # maps.patch_features: Conv2d, ReLU
    n, channels, height, width = features.shape
    queries = features.permute(0, 2, 3, 1).reshape(-1, channels)
    grid = search(queries).reshape(n, height, width)
    # F.interpolate(bilinear) as two matrix products: ONNX Runtime has no float64 Resize.
    rows = upsample_matrix(height, model.arch.image_size[0])
    cols = upsample_matrix(width, model.arch.image_size[1])
    return (rows @ grid @ cols.T).float()


class NearestDistance(nn.Module):
    """Distance of each query to its nearest row of a bank, float64, as torch.cdist takes it
    (|q|^2 - 2 q.b + |b|^2, at least 0), ``_BANK_CHUNK`` rows at a time to bound memory: one
    matrix product per chunk with the rows' norms as its bias, and |q|^2, the same for every
    row, added after the minimum."""

    def __init__(self, bank: torch.Tensor) -> None:
        super().__init__()
        bank = bank.double()
        self.register_buffer("weights", -2 * bank.T.contiguous())
        self.register_buffer("norms", bank.pow(2).sum(1))

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        q = queries.double()
        least = [
            torch.addmm(
                self.norms[start : start + _BANK_CHUNK],
                q,
                self.weights[:, start : start + _BANK_CHUNK],
            ).amin(1)
            for start in range(0, len(self.norms), _BANK_CHUNK)
        ]
        return (q.pow(2).sum(1) + torch.stack(least).amin(0)).clamp_min(0).sqrt()


def blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """The (size, size) matrix B with B @ v = scipy.ndimage.gaussian_filter1d(v, sigma), as
    ``convvae.metrics.pixel.smooth_maps`` filters each axis (mode 'reflect', truncate 4): scipy's
    own filter of the identity, so the kernel and the edge handling are scipy's, not a copy."""
    if sigma == 0:
        return torch.eye(size)
    return torch.from_numpy(ndimage.gaussian_filter1d(np.eye(size), sigma, axis=0)).float()


def upsample_matrix(size: int, out_size: int) -> torch.Tensor:
    """The (out_size, size) float64 matrix U with U @ v = v upsampled as ``F.interpolate``
    (bilinear, align_corners=False) resizes each axis: torch's own interpolation of the
    identity, so the weights are torch's."""
    basis = torch.eye(size, dtype=torch.float64)[:, None, :, None]  # (size, 1, size, 1)
    resized = F.interpolate(basis, size=(out_size, 1), mode="bilinear", align_corners=False)
    return resized[:, 0, :, 0].T.contiguous()


def _translations() -> dict[Callable, Callable]:
    """ONNX translations that replace onnxscript's where they lose precision. Its log_sigmoid,
    through which the Bernoulli NLL (binary_cross_entropy_with_logits) goes, is Log(Sigmoid(x)):
    -inf once the sigmoid underflows (an infinite neg_elbo) and, in ONNX Runtime, up to 0.03
    nats per pixel off on a trained digit model."""
    from onnxscript import opset18 as op

    def log_sigmoid(x):  # -softplus(-x), which ONNX Runtime computes stably
        return op.Neg(op.Softplus(op.Neg(x)))

    return {torch.ops.aten.log_sigmoid.default: log_sigmoid}
