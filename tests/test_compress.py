"""Latent codes at three precisions, code files, and the rate-distortion table."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from convvae.errors import DataError
from convvae.model.vae import ConvVAE
from convvae.uses.compress import (
    decode,
    encode,
    load_codes,
    psnr_db,
    quantize,
    rate_distortion,
    save_codes,
    save_rate_distortion_plot,
)
from convvae.uses.evaluation import reconstruct
from tests.conftest import TINY


@pytest.fixture(scope="module")
def test_images(mnist_slice):
    return torch.from_numpy(mnist_slice.test.images[:64])


def test_bytes_per_image_is_the_code_array_size(trained, test_images):
    # The tiny model has latent_dim 4: 4 x 4 bytes, 4 x 2, 4 x 1.
    sizes = {
        p: encode(trained, test_images, p).bytes_per_image() for p in ("float32", "float16", "int8")
    }
    assert sizes == {"float32": 16.0, "float16": 8.0, "int8": 4.0}


def test_lower_precision_decodes_close_to_the_float32_reconstruction(trained, test_images):
    full = reconstruct(trained, test_images)
    error = {
        p: (decode(trained, encode(trained, test_images, p)) - full).abs().max().item()
        for p in ("float32", "float16", "int8")
    }
    assert error["float32"] < 1e-6
    assert error["float16"] < 5e-3
    assert error["float16"] < error["int8"] < 0.1


def test_int8_quantisation_error_is_at_most_half_a_step():
    latent = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    latent[:, 2] = 1.5  # a constant dimension must not divide by zero
    codes = quantize(latent, "int8")
    assert codes.values.dtype == np.int8 and codes.scale.shape == (3,)
    error = np.abs(codes.latent().numpy() - latent)
    assert (error <= codes.scale / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="precision"):
        quantize(latent, "int4")


def test_code_file_round_trip_and_model_check(trained, test_images, tmp_path):
    codes = encode(trained, test_images[:3], "int8")
    path = tmp_path / "codes.npz"
    save_codes(codes, ["a.png", "b.png", "ü.png"], trained, path)
    assert [p.name for p in tmp_path.iterdir()] == ["codes.npz"]  # no temporary left behind
    loaded, names = load_codes(path, trained)
    assert names == ["a.png", "b.png", "ü.png"] and loaded.precision == "int8"
    torch.testing.assert_close(decode(trained, loaded), decode(trained, codes))
    with pytest.raises(DataError, match="latent_dim=4 \\(model has 8\\)"):
        load_codes(path, ConvVAE(dataclasses.replace(TINY, latent_dim=8)))
    # The same architecture with other weights (a retrained model, another class's) would
    # decode the codes into wrong images.
    retrained = copy.deepcopy(trained)
    with torch.no_grad():
        retrained.decoder_mlp[0].bias.add_(0.01)
    with pytest.raises(DataError, match="written by a model with other weights"):
        load_codes(path, retrained)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(DataError, match="not a code file"):
        load_codes(tmp_path / "plain.npy", trained)
    with np.load(path) as archive:
        arrays = dict(archive)
    np.savez(tmp_path / "bad_names.npz", **{**arrays, "names": np.frombuffer(b"\xff{", np.uint8)})
    with pytest.raises(DataError, match="unreadable image names"):
        load_codes(tmp_path / "bad_names.npz", trained)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(
        DataError, match="no architecture, codes, model_sha256, names, precision array"
    ):
        load_codes(tmp_path / "other.npz", trained)


def test_a_code_file_without_the_digest_or_of_the_wrong_shape_is_refused(
    trained, test_images, tmp_path
):
    codes = encode(trained, test_images[:2], "int8")
    save_codes(codes, ["a.png", "b.png"], trained, tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as archive:
        good = dict(archive)
    forged = {
        # Files from before the digest, or forged ones: the architecture alone proves nothing.
        "no_digest": ({k: v for k, v in good.items() if k != "model_sha256"}, "no model_sha256"),
        "short": ({**good, "codes": good["codes"][:, :3]}, r"shape \(2, 3\).*\(N, 4\)"),
        "flat": ({**good, "codes": good["codes"].ravel()}, r"codes of shape \(8,\)"),
        "names": ({**good, "codes": good["codes"][:1]}, "1 codes but 2 image names"),
        "scale": ({**good, "scale": good["scale"][:2]}, r"scale or offset of shape \(2,\)"),
        "not_a_list": (
            {**good, "names": np.frombuffer(b'{"a": 1}', np.uint8)},
            "unreadable image names",
        ),
    }
    for name, (arrays, message) in forged.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(DataError, match=message):
            load_codes(tmp_path / f"{name}.npz", trained)
    # Older files stored the names as a unicode array: still read, digest given.
    np.savez(tmp_path / "unicode.npz", **{**good, "names": np.array(["a.png", "b.png"])})
    assert load_codes(tmp_path / "unicode.npz", trained)[1] == ["a.png", "b.png"]


def test_rate_distortion_table(trained, test_images, tmp_path):
    rows = {row["method"]: row for row in rate_distortion(trained, test_images, [10, 95])}
    assert list(rows) == ["vae-float32", "vae-float16", "vae-int8", "png", "jpeg-q10", "jpeg-q95"]
    assert rows["png"]["mse"] == 0 and rows["png"]["psnr_db"] is None  # lossless
    assert rows["jpeg-q95"]["psnr_db"] > rows["jpeg-q10"]["psnr_db"]
    assert rows["jpeg-q95"]["bytes_per_image"] > rows["jpeg-q10"]["bytes_per_image"]
    assert rows["vae-int8"]["bytes_per_image"] == 4
    assert rows["vae-float32"]["psnr_db"] == pytest.approx(psnr_db(rows["vae-float32"]["mse"]))
    assert rows["vae-float32"]["bce_nats"] > 0
    save_rate_distortion_plot(list(rows.values()), tmp_path / "rd.png")
    assert (tmp_path / "rd.png").read_bytes()[:4] == b"\x89PNG"


def test_psnr():
    assert psnr_db(0.01) == pytest.approx(20.0)
    assert psnr_db(0.0) is None
