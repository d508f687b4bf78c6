"""The patch bank: a greedy coreset of the reference's patch features, stored in the model file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convvae.anomaly.fit import fit_reference
from convvae.anomaly.patch_bank import (
    BANK_ROWS,
    LEGACY_RANDOM_ROWS,
    coreset_bank,
    greedy_coreset,
    pooled_rows,
)
from convvae.anomaly.reference import Reference, load_fitted_model, save_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.errors import CheckpointError
from convvae.model.files import save_model


def patch_rows(model, images: np.ndarray) -> torch.Tensor:
    """Every patch feature of ``images``, (N * H' * W', C'), in the bank's row order."""
    with torch.no_grad():
        found = model.patch_features(torch.from_numpy(images).float() / 255)
    return found.permute(0, 2, 3, 1).reshape(-1, found.shape[1])


def coverage_radius(rows: torch.Tensor, chosen: torch.Tensor) -> float:
    """The largest distance from any row to its nearest chosen row."""
    return float(torch.cdist(rows.double(), rows[chosen].double()).amin(1).max())


def test_the_greedy_coreset_is_the_farthest_point_rule_written_out(trained, mnist_slice):
    rows = patch_rows(trained, mnist_slice.train.images[:6])  # 1,176 real patch features
    chosen = greedy_coreset(rows, 40).tolist()
    expected, nearest = [0], np.full(len(rows), np.inf)
    points = rows.double().numpy()
    for _ in range(39):
        nearest = np.minimum(nearest, ((points - points[expected[-1]]) ** 2).sum(1))
        expected.append(int(nearest.argmax()))
    assert chosen == expected
    assert len(set(chosen)) == 40
    assert greedy_coreset(rows[:30], 40).tolist() == list(range(30))  # fewer rows: all of them


def test_the_coreset_covers_the_patches_better_than_a_random_subset(trained, mnist_slice):
    """The point of the coreset: every normal patch lies near a bank row. On real digit
    patches its coverage radius is a fraction of a random subset's of the same size, whose
    worst-covered patches are the rare ones (those far from the common blank background)."""
    rows = patch_rows(trained, mnist_slice.train.images[:100])  # 19,600 patches
    coreset = greedy_coreset(rows, 500)
    random = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:500]
    assert coverage_radius(rows, coreset) < 0.5 * coverage_radius(rows, random)


def test_a_fitted_reference_stores_a_coreset_bank_that_the_patch_map_searches(
    trained, mnist_slice, tmp_path
):
    train = mnist_slice.train.images[:120]  # 23,520 patches: a pool of all, BANK_ROWS chosen
    reference = fit_reference(trained, train, mnist_slice.val.images[:40], 2, 0)
    bank = reference.patch_bank
    assert bank.dtype == np.float32
    assert bank.shape == (BANK_ROWS, trained.encoder[0].out_channels)
    batches = [torch.from_numpy(train).float() / 255]
    chosen = coreset_bank(trained.patch_features, batches, len(train) * 14 * 14)
    np.testing.assert_array_equal(bank, chosen.numpy())  # the coreset, not any other subset
    every = patch_rows(trained, train).numpy()
    # Each bank row is one of the training patches.
    nearest = torch.cdist(torch.from_numpy(bank).double(), torch.from_numpy(every).double())
    assert float(nearest.amin(1).max()) < 1e-5
    save_fitted_model(trained, reference, tmp_path / "model.pt")
    _, loaded = load_fitted_model(tmp_path / "model.pt")
    np.testing.assert_array_equal(loaded.patch_bank, bank)
    scorer = Scorer(trained, loaded, ScoreSpec("patch_knn"))
    np.testing.assert_array_equal(scorer.bank("patch_bank").numpy(), bank)
    # The raw map of a test image: each patch's distance to its nearest stored row.
    image = torch.from_numpy(mnist_slice.test.images[:1]).float() / 255
    queries = patch_rows(trained, mnist_slice.test.images[:1]).double()
    expected = torch.cdist(queries, torch.from_numpy(bank).double()).amin(1)
    grid = scorer.feature_knn_map(image)  # upsampled from the (14, 14) grid
    upsampled = scorer.upsample_rows @ expected.reshape(14, 14) @ scorer.upsample_cols
    torch.testing.assert_close(grid[0], upsampled.float())


def test_a_file_without_a_stored_bank_searches_the_random_subset_it_always_did(
    trained, mnist_slice
):
    images = np.concatenate([mnist_slice.train.images, mnist_slice.val.images])[:400]
    scorer = Scorer(trained, Reference(images, {}, {}), ScoreSpec("patch_knn"))
    bank = scorer.bank("patch_bank")
    every = patch_rows(trained, images)
    keep = torch.randperm(len(every), generator=torch.Generator().manual_seed(0))
    assert len(every) > LEGACY_RANDOM_ROWS
    torch.testing.assert_close(bank, every[keep[:LEGACY_RANDOM_ROWS]])


@pytest.mark.parametrize(
    ("bank", "complaint"),
    [
        (np.zeros((10, 3), np.float32), r"float32 \(10, 3\), not float32 rows of 8"),
        (np.zeros((10, 8), np.float64), r"float64 \(10, 8\), not float32 rows of 8"),
        (np.zeros((LEGACY_RANDOM_ROWS + 1, 8), np.float32), "65537 rows, not 1 to 65536"),
        (np.full((10, 8), np.nan, np.float32), "NaN or infinite values"),
        (torch.ones(10, 8, requires_grad=True), "NOT REFUSED"),  # read as its values
        ([[0.0] * 8] * 10, "patch bank is a list, not a tensor"),
    ],
)
def test_a_forged_patch_bank_is_refused_in_one_line(
    trained, mnist_slice, tmp_path, bank, complaint
):
    images = mnist_slice.train.images[:10]
    if isinstance(bank, np.ndarray):
        save_fitted_model(
            trained, Reference(images, {}, {}, patch_bank=bank), tmp_path / "model.pt"
        )
    else:  # forged beyond what Reference writes: by hand
        payload = Reference(images, {}, {}).payload() | {"patch_bank": bank}
        save_model(trained, tmp_path / "model.pt", {"reference": payload})
    if complaint == "NOT REFUSED":
        _, loaded = load_fitted_model(tmp_path / "model.pt")
        np.testing.assert_array_equal(loaded.patch_bank, np.ones((10, 8), np.float32))
        return
    with pytest.raises(CheckpointError, match=complaint) as info:
        load_fitted_model(tmp_path / "model.pt")
    assert "\n" not in str(info.value)
    assert "dvc repro -f train" in str(info.value)


def test_every_part_gives_its_share_and_the_bank_has_every_row_asked_for(trained, mnist_slice):
    images = mnist_slice.train.images[:1]  # 196 patches: all in the pool, 7 uneven parts
    batches = [torch.from_numpy(images).float() / 255]
    for rows, chunk_rows in ((5, 30), (24, 29), (100, 27), (195, 27)):
        bank = coreset_bank(trained.patch_features, batches, 196, rows, chunk_rows)
        assert bank.shape == (rows, 8)


def test_pooled_rows_gathers_the_seeded_subset_batch_by_batch(trained, mnist_slice):
    images = mnist_slice.train.images[:50]
    every = patch_rows(trained, images)
    batches = (torch.from_numpy(images[i : i + 7]).float() / 255 for i in range(0, 50, 7))
    pool = pooled_rows(trained.patch_features, batches, len(every), 1000)
    keep = torch.randperm(len(every), generator=torch.Generator().manual_seed(0))[:1000]
    torch.testing.assert_close(pool, every[keep])


def test_a_pool_in_parts_gives_each_part_its_share_of_the_coreset(trained, mnist_slice):
    """Cut into parts, the pool's coreset is the union of each part's own greedy coreset, and
    still covers the patches far better than a random subset of the same size."""
    images = mnist_slice.train.images[:20]  # 3,920 patches: all in a pool of 8 x 600
    every = patch_rows(trained, images)
    batches = [torch.from_numpy(images).float() / 255]
    bank = coreset_bank(trained.patch_features, batches, len(every), rows=600, chunk_rows=1000)
    parts = every.tensor_split(4)  # ceil(3920 / 1000) parts, 150 rows each
    expected = torch.cat([part[greedy_coreset(part, 150)] for part in parts])
    torch.testing.assert_close(bank, expected)
    random = torch.randperm(len(every), generator=torch.Generator().manual_seed(0))[:600]
    chosen = torch.cdist(every.double(), bank.double()).amin(1).max()
    assert chosen < 0.5 * coverage_radius(every, random)
