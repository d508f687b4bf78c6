"""The pyfunc flavour of a trained ConvVAE, for `mlflow models serve` and `mlflow.pyfunc`.

MLflow imports this module (``loader_module="convvae.serving"``: registered models name it, so
it stays here) and calls ``_load_pyfunc`` with the logged model file and the model's threshold
record (its ``model_config``); no pickled code is involved. It decides with
``convvae.anomaly.detector.Detector``, as `convvae score` and promotion do.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import torch

from convvae import __version__
from convvae.anomaly.detector import Detector, detector_from
from convvae.anomaly.reference import load_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import score_and_map
from convvae.anomaly.thresholds import parse_record
from convvae.data.images import check_pixels
from convvae.errors import DataError
from convvae.runtime.allocator import give_back_freed_memory, keep_freed_memory
from convvae.uses.evaluation import reconstruct

# Images per request: a bound on the memory and time one request can take (about 10 s on two
# CPU cores at 28x28); a larger batch is refused with a one-line reason, split it.
MAX_BATCH = 1024
# Pixel values per request, whatever the image size (1024 RGB 256x256 images would be 201 M):
# 4 M floats, 16 MiB as float32; larger images allow fewer per request (max_images).
PIXEL_BUDGET = 1 << 22
# The longest JSON text of one pixel value ("0.12345678901234567, "): with the budget, it bounds
# the request body `convvae serve` reads (max_body_bytes).
JSON_BYTES_PER_VALUE = 24
# Outputs a client may ask for with params={"return_...": true}; each costs a decode per image.
OPTIONAL_OUTPUTS = {"return_reconstruction": "reconstruction", "return_anomaly_map": "anomaly_map"}
PARAMS_EXAMPLE = dict.fromkeys(OPTIONAL_OUTPUTS, False)
# The MLmodel metadata key naming the convvae version that logged a model (and must serve it).
PACKAGE_VERSION_KEY = "convvae_version"
# The response's names before 0.2 (served beside the new ones for one release).
OLD_NAMES = {"score": "anomaly_score", "p_value": "normalized_score"}


class ScoringModel:
    """Scores batches of images with one detector (or, for a model registered without a
    threshold record, a scorer alone); reconstructions and maps on request."""

    def __init__(self, scorer: Scorer, detector: Detector | None = None) -> None:
        self.scorer = scorer
        self.detector = detector

    def predict(self, model_input, params: dict | None = None) -> dict[str, np.ndarray]:
        """model_input: float pixels in [0, 1], shape (N, C, H, W) or (N, H, W).

        Returns {"score": float64 (N,), the stored score, higher is more anomalous; with a
        threshold record also "p_value" (conformal, float64 (N,); small = unusual) and
        "is_anomaly" (bool (N,))}, and the old names of OLD_NAMES for one release; with params
        {"return_reconstruction": true} also "reconstruction" (float32 (N, C, H, W), the decoded
        means), with {"return_anomaly_map": true} "anomaly_map" (float32 (N, H, W), where each
        image is anomalous). At most MAX_BATCH images per call.
        """
        wanted = {k for k, v in (params or {}).items() if k in OPTIONAL_OUTPUTS and v}
        images = self._as_images(model_input)
        name = self.scorer.spec.name
        # The score and the map from one pass (patch_knn is read off the map).
        scores, maps = score_and_map(
            self.scorer, images.numpy(), (name,), with_map="return_anomaly_map" in wanted
        )
        if self.detector is not None:
            out = self.detector.record.decide(scores[name])
        else:
            out = {"score": scores[name]}
        out |= {old: out[new] for new, old in OLD_NAMES.items() if new in out}
        if "return_reconstruction" in wanted:
            out["reconstruction"] = reconstruct(self.scorer.model, images).numpy()
        if maps is not None:
            out["anomaly_map"] = maps
        return out

    def _as_images(self, model_input) -> torch.Tensor:
        arch = self.scorer.model.arch
        expected = arch.image_shape
        array = np.asarray(model_input, dtype=np.float32)
        if array.ndim == 3 and arch.image_channels == 1:
            array = array[:, None]
        if array.ndim != 4 or array.shape[1:] != expected:
            raise ValueError(
                f"images must have shape (N, {', '.join(map(str, expected))}), got {array.shape}"
            )
        if len(array) == 0:
            raise ValueError("no images in the request; send at least one")
        if len(array) > max_images(expected):
            raise ValueError(
                f"{len(array)} images in one request; send at most {max_images(expected)} of "
                f"{'x'.join(map(str, expected))} per request"
            )
        images = torch.from_numpy(array)
        check_pixels(images)
        return images


def max_images(image_shape: tuple[int, ...]) -> int:
    """Images of ``image_shape`` (C, H, W) one request may hold: MAX_BATCH, fewer where that
    many would exceed PIXEL_BUDGET values (at least one)."""
    return max(1, min(MAX_BATCH, PIXEL_BUDGET // int(np.prod(image_shape))))


def max_body_bytes(image_shape: tuple[int, ...]) -> int:
    """The largest request body `convvae serve` reads for such images (JSON, 64 KiB spare)."""
    return max_images(image_shape) * int(np.prod(image_shape)) * JSON_BYTES_PER_VALUE + (1 << 16)


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> ScoringModel:
    keep_freed_memory()  # the server scores in this process (convvae.runtime.allocator)
    _check_package_version(Path(data_path).parents[1])
    if model_config:
        record = parse_record(json.dumps(dict(model_config)), "the model's threshold record")
        detector = detector_from(data_path, record)
        return ScoringModel(detector.scorer, detector)
    # Registered before threshold records: scores only, as such versions were served then
    # (fused where the model file has a reference, else the likelihood's deviance).
    model, reference = load_fitted_model(data_path)
    name = "fused" if reference is not None else "excess_nll"
    return ScoringModel(Scorer(model, reference, ScoreSpec(name)))


def _check_package_version(model_folder: Path) -> None:
    """The served model runs the installed convvae (its artifact holds no code): the version
    that logged it, recorded in its MLmodel metadata, or a DataError naming both."""
    if not (model_folder / "MLmodel").is_file():  # a model file outside an artifact
        return
    from mlflow.models import Model

    logged_by = (Model.load(str(model_folder)).metadata or {}).get(PACKAGE_VERSION_KEY)
    if logged_by is not None and logged_by != __version__:
        raise DataError(
            f"{model_folder}: logged by convvae {logged_by}, but convvae {__version__} is "
            f"installed; install convvae {logged_by} to serve it, or re-register the model"
        )


class RequestLimits:
    """ASGI middleware in front of MLflow's scoring app (`convvae serve`): a body longer than
    ``max_bytes`` is answered 413 before it is read or parsed (from its Content-Length, or as
    soon as a chunked body passes the limit); error replies carry no stack trace; memory taken
    by a large request is given back once it is answered."""

    def __init__(
        self, app, max_bytes: int, read_timeout_s: float = 30, trim_above: int = 1 << 20
    ) -> None:
        self.app, self.max_bytes, self.trim_above = app, max_bytes, trim_above
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return await _reply(send, 413, self._too_large(declared.decode(errors="replace")))
        # JSON only: MLflow also parses CSV and parquet, whose bodies expand far beyond their
        # bytes (a compressed parquet of zeros, a thousandfold) before the model can refuse.
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["method"] == "POST" and kind != b"application/json":
            message = f"content type {kind.decode(errors='replace') or 'none'}; send JSON"
            return await _reply(send, 415, message + " (application/json)")
        try:  # a client that sends slowly holds no server memory beyond the timeout
            async with asyncio.timeout(self.read_timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            return await _reply(send, 408, f"body not received in {self.read_timeout_s:g} s")
        except _ClientLeft:
            return
        if body is None:
            return await _reply(send, 413, self._too_large(f"more than {self.max_bytes}"))
        handed_on = False

        async def replay() -> dict:
            nonlocal handed_on
            if handed_on:
                return await receive()
            handed_on = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        try:
            await self.app(scope, replay, _without_stack_traces(send))
        finally:
            if len(body) > self.trim_above:
                del body
                give_back_freed_memory()

    async def _read(self, receive) -> bytearray | None:
        """The whole body, read as bytes and never past the limit (None beyond it: a chunked
        body without a length is stopped as soon as it is too long)."""
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientLeft
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return None
            more = message.get("more_body", False)
        return body

    def _too_large(self, length: str) -> str:
        return (
            f"request body of {length} bytes; at most {self.max_bytes} for this model: send "
            "fewer images per request"
        )


class _ClientLeft(Exception):
    """The client disconnected before its body was in."""


def _without_stack_traces(send):
    """``send`` for one response; a JSON error body's ``stack_trace`` becomes its last line
    (``reason``: the exception and its message, no code paths)."""
    held: dict = {}

    async def filtered(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held["start"], held["body"] = message, b""
            return
        if "start" not in held:
            return await send(message)
        held["body"] += message.get("body", b"")
        if message.get("more_body"):
            return
        body = held["body"]
        try:
            reply = json.loads(body)
            trace = reply.pop("stack_trace", None) if isinstance(reply, dict) else None
            if trace is not None:  # its last line, "ValueError: ...", is the reason
                reply["reason"] = (str(trace).strip().splitlines() or [""])[-1]
                body = json.dumps(reply).encode()
        except ValueError:
            pass
        start = held["start"]
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return filtered


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
