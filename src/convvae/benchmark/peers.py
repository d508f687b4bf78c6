"""Peer detectors for the one-class anomaly benchmark: PyOD's KNN, IForest, AutoEncoder and VAE.

Each peer is the PyOD class with its DEFAULT settings (pyod 3.6.7), fitted on the normal training
images and scoring the same image sets as the ConvVAE, on flattened pixels scaled to [0, 1]
(float32, shape (N, C*H*W)). A score is PyOD's ``decision_function`` (higher = more anomalous),
returned as float64:

- ``pyod_knn``: ``KNN()``, distance to the 5th nearest training image (Euclidean, method
  ``largest``). Takes no seed; deterministic.
- ``pyod_iforest``: ``IForest(random_state=seed)``, the negated scikit-learn IsolationForest
  decision function (100 trees, 256 samples each).
- ``pyod_autoencoder``: ``AutoEncoder(random_state=seed, verbose=0, device="cpu")``, a
  784-64-32-64-784 MLP (batch norm, dropout 0.2, Adam lr 1e-3, weight decay 1e-5, 10 epochs of
  batch 32, last partial batch dropped) on standardised pixels; the score is the Euclidean
  reconstruction error in standardised units.
- ``pyod_vae``: ``VAE(random_state=seed, verbose=0, device="cpu")``, an MLP VAE (128-64-32,
  latent 2, 30 epochs of batch 32) on standardised pixels; the score is the Euclidean error of a
  reconstruction decoded from ONE posterior sample (PyOD draws the reparameterisation noise when
  scoring too).

The only non-default arguments, and why:

- ``random_state=seed`` (IForest, AutoEncoder, VAE): a fixed seed so results are reproducible
  (IForest's default is None, i.e. a fresh seed per run; the deep models default to 42 and take
  ours so that several seeds can be averaged). KNN has no random state.
- ``verbose=0`` (AutoEncoder, VAE): their default ``verbose=1`` draws a tqdm progress bar on
  stderr for every fit. IForest's and KNN's defaults are already silent.
- ``device="cpu"`` (AutoEncoder, VAE): their default ``device=None`` picks ``cuda:0`` whenever
  CUDA is available, so the same call would train elsewhere, with other timings and other
  floating-point results, depending on the machine.

What else this module does around the PyOD calls, none of which changes a detector:

- PyOD's deep models seed the *global* generators in their constructor (``random``,
  ``numpy.random``, ``torch.manual_seed``, and ``os.environ["PYTHONHASHSEED"]``). Those states
  are saved before and restored after each ``run_peer`` call, so running a peer does not change
  the random numbers of whatever runs after it.
- The VAE draws its scoring noise from torch's global generator: it is reseeded with ``seed``
  before each image set is scored, so an image set's scores do not depend on what was scored
  before it (they do depend on the image's position within its set, as in PyOD).
- The deep models' scoring calls a numba-compiled distance function that numba compiles on first
  use in each process (about 3-4 s, every benchmark stage pays it). Its on-disk cache is
  switched on (numba's own cache, as ``@njit(cache=True)`` would: next to PyOD's source, or
  under ``NUMBA_CACHE_DIR``), so later processes load it in about 0.2 s; and it is compiled
  before the clock starts, so ``fit_seconds`` of the first deep peer in a process measures
  fitting, not compiling.
- PyOD's deep models standardise each pixel with the training images' mean and standard
  deviation plus 1e-8. A pixel that is constant in training (e.g. a border pixel that is always
  0 in MNIST digits) turns any ink there into about 1e8 standard deviations, so their scores can
  reach about 1e9 on such images: any image with ink where no training image has any ranks
  above every image without. That is PyOD's default behaviour and is kept. (Fashion-MNIST's
  training images of one class leave 0 to 57 of the 784 pixels constant, depending on the class;
  for T-shirt/top none, and its scores stay below about 1e3.)
- Torch runs on its global thread count (``torch.get_num_threads()``, by default one per core),
  as PyOD leaves it; KNN and IForest use one core (their default ``n_jobs=1``).

PyOD 3.6.7 emits no warnings for these calls on uint8-derived images (checked by
tests/test_peers.py), so none are filtered: a new warning means something changed.
"""

from __future__ import annotations

import functools
import os
import random
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from convvae.config import PeerName
from convvae.errors import DataError

PEERS: tuple[str, ...] = typing.get_args(PeerName)
# Peers whose scoring draws from torch's global generator (reseeded before each image set).
_STOCHASTIC_SCORING = ("pyod_vae",)
# PyOD's torch models, and their default batch size (the last partial batch is dropped).
_DEEP_PEERS = ("pyod_autoencoder", "pyod_vae")
_DEEP_BATCH_SIZE = 32


@dataclass(frozen=True)
class PeerScores:
    """One peer's anomaly scores on named image sets, and how long it took.

    scores: image-set name -> float64 (N,) scores of that set's images, in order (higher = more
        anomalous; units are the detector's own: a distance in pixel or standardised units, or
        IsolationForest's negated decision function).
    fit_seconds: wall-clock seconds of ``fit`` on the training images (PyOD also scores the
        training images inside ``fit``, to set its own threshold; that is included).
    score_seconds: wall-clock seconds of ``decision_function`` over all image sets together.
    """

    name: str
    scores: dict[str, np.ndarray]
    fit_seconds: float
    score_seconds: float


def flatten_unit(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) images -> float32 (N, C*H*W) pixels in [0, 1] (divided by 255)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"expected uint8 images of shape (N, C, H, W), got {images.dtype} {images.shape}"
        )
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def run_peer(
    name: str, train_images: np.ndarray, image_sets: dict[str, np.ndarray], seed: int = 0
) -> PeerScores:
    """Fit peer ``name`` (one of ``PEERS``) on ``train_images`` and score every set of
    ``image_sets``.

    train_images: uint8 (N, C, H, W), the normal images to fit on. image_sets: name -> uint8
    (M, C, H, W) images of the same C, H, W (e.g. ``{"test": ..., "val": ...}``). ``seed`` is
    the detector's ``random_state`` (ignored by ``pyod_knn``, which has none) and the seed of the
    VAE's scoring noise. Returns float64 (M,) scores per set and the fit and scoring times in
    seconds (``time.perf_counter``). Raises ValueError for an unknown name or malformed images.
    """
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose one of {', '.join(PEERS)}")
    train = flatten_unit(train_images)
    sets = {set_name: flatten_unit(images) for set_name, images in image_sets.items()}
    for set_name, pixels in sets.items():
        if pixels.shape[1] != train.shape[1]:
            raise ValueError(
                f"image set {set_name!r} has images of shape {image_sets[set_name].shape[1:]}, "
                f"the training images {train_images.shape[1:]}"
            )
    if name in _DEEP_PEERS and len(train) < _DEEP_BATCH_SIZE:
        # PyOD's deep models drop the last partial batch: with fewer images they never train
        # and fail inside PyOD with an UnboundLocalError.
        raise DataError(
            f"{name} needs at least {_DEEP_BATCH_SIZE} training images (its default batch size), "
            f"got {len(train)}; remove it from benchmark.peers or raise data.max_train_images"
        )
    make = _constructors(seed)[name]
    with _global_random_state_kept() as reseed_torch:
        if name in _DEEP_PEERS:
            _compile_numba_distance()
        start = time.perf_counter()
        detector = make().fit(train)
        fit_seconds = time.perf_counter() - start
        scores: dict[str, np.ndarray] = {}
        score_seconds = 0.0
        for set_name, pixels in sets.items():
            if name in _STOCHASTIC_SCORING:
                reseed_torch(seed)
            start = time.perf_counter()
            raw = detector.decision_function(pixels)
            score_seconds += time.perf_counter() - start
            scores[set_name] = np.asarray(raw, dtype=np.float64).reshape(len(pixels))
    return PeerScores(name, scores, fit_seconds, score_seconds)


def _constructors(seed: int) -> dict[str, Callable[[], Any]]:
    """Peer name -> a function building the unfitted PyOD detector (imports PyOD: seconds)."""
    from pyod.models.auto_encoder import AutoEncoder
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.vae import VAE

    return {
        "pyod_knn": lambda: KNN(),
        "pyod_iforest": lambda: IForest(random_state=seed),
        "pyod_autoencoder": lambda: AutoEncoder(random_state=seed, verbose=0, device="cpu"),
        "pyod_vae": lambda: VAE(random_state=seed, verbose=0, device="cpu"),
    }


@functools.cache
def _compile_numba_distance() -> None:
    """Compile PyOD's numba distance (once per process) before any clock starts, through
    numba's on-disk cache: seconds the first time, about 0.2 s in every later process."""
    from pyod.utils import stat_models

    # PyOD declares it @njit without cache=True; enable_caching is what cache=True calls. A
    # PyOD without this private helper still works, compiling in every process.
    helper = getattr(stat_models, "_pairwise_distances_no_broadcast_helper", None)
    if hasattr(helper, "enable_caching"):
        helper.enable_caching()
    pixels = np.zeros((1, 2), dtype=np.float32)
    stat_models.pairwise_distances_no_broadcast(pixels, pixels)


@contextmanager
def _global_random_state_kept() -> Iterator[Callable[[int], None]]:
    """Restore ``random``, ``numpy.random``, torch's CPU (and initialised CUDA) generators and
    ``PYTHONHASHSEED`` on exit; yields ``torch.manual_seed`` for use inside."""
    import torch

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    hash_seed = os.environ.get("PYTHONHASHSEED")
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []

    def reseed_torch(seed: int) -> None:
        torch.manual_seed(seed)

    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield reseed_torch
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if hash_seed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = hash_seed
