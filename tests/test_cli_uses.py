"""`convvae generate | interpolate | encode | decode | impute` in-process, on a trained model."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from convvae.cli.main import main
from convvae.config import TrackingConfig
from convvae.data.image_files import load_images
from convvae.data.images import save_png
from convvae.data.splits import save_splits
from convvae.errors import DataError, TrackingError
from convvae.model.files import save_model
from convvae.model.vae import ConvVAE
from convvae.tracking.modelref import load_model_ref
from convvae.uses.compress import load_codes, save_codes
from tests.conftest import TINY

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def files(trained, mnist_slice, tmp_path_factory):
    root = tmp_path_factory.mktemp("uses")
    save_model(trained, root / "model.pt")
    save_splits(mnist_slice, root / "splits.npz")
    (root / "digits").mkdir()
    for i, image in enumerate(mnist_slice.test.images[:5]):
        save_png(image, root / "digits" / f"d{i}.png")
    np.save(root / "digits.npy", mnist_slice.test.images[:5, 0])
    return root


def fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and message.count("\n") == 1, message
    return message


def test_generate_png_and_npy(files, tmp_path):
    model = str(files / "model.pt")
    main(["generate", "--model", model, "--n", "9", "--out", str(tmp_path / "g.png")])
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.mode == "L" and grid.size == (2 + 3 * 30, 2 + 3 * 30)
    main(["generate", "--model", model, "--n", "5", "--seed", "1", "--temperature", "0.5",
          "--out", str(tmp_path / "g.npy")])  # fmt: skip
    samples = np.load(tmp_path / "g.npy")
    assert samples.shape == (5, 1, 28, 28) and samples.dtype == np.float32
    assert samples.min() >= 0 and samples.max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npy", "g.png"]  # no temporaries


def test_interpolate_between_images_of_an_array_or_pngs(files, tmp_path):
    model = str(files / "model.pt")
    array = str(files / "digits.npy")
    main(["interpolate", "--model", model, array, array, "--index-a", "0", "--index-b", "4",
          "--steps", "6", "--out", str(tmp_path / "walk.npy")])  # fmt: skip
    assert np.load(tmp_path / "walk.npy").shape == (6, 1, 28, 28)
    pngs = [str(files / "digits" / name) for name in ("d0.png", "d1.png")]
    main(["interpolate", "--model", model, *pngs, "--out", str(tmp_path / "walk.png")])
    assert (tmp_path / "walk.png").stat().st_size > 0


def test_encode_decode_round_trip(files, tmp_path, trained, capsys):
    model = str(files / "model.pt")
    codes = tmp_path / "codes.npz"
    main(["encode", "--model", model, str(files / "digits"), "--out", str(codes)])
    said = capsys.readouterr().out
    file_bytes = codes.stat().st_size / 5
    assert f"{2 * trained.arch.latent_dim:g} bytes of code per image (float16)" in said
    assert f"the file, with names and side information, {file_bytes:.1f} bytes per image" in said
    loaded, names = load_codes(codes, trained)
    assert loaded.precision == "float16" and names == [f"d{i}.png" for i in range(5)]
    main(["decode", "--model", model, str(codes), "--out", str(tmp_path / "out")])
    decoded = load_images(tmp_path / "out", SHAPE)
    assert decoded.names == names and decoded.images.shape == (5, 1, 28, 28)
    # Outputs are never replaced silently: the code file, then the decoded PNGs.
    again = ["encode", "--model", model, str(files / "digits.npy"), "--precision", "int8",
             "--out", str(codes)]  # fmt: skip
    assert f"{codes} exists; pass --overwrite" in fails(again, capsys)
    main([*again, "--overwrite"])
    assert load_codes(codes, trained)[0].precision == "int8"
    main(["decode", "--model", model, str(codes), "--out", str(tmp_path / "arrays")])
    assert sorted(p.name for p in (tmp_path / "arrays").iterdir())[0] == "digits.npy_0.png"
    before = (tmp_path / "arrays" / "digits.npy_0.png").read_bytes()
    assert "digits.npy_0.png (and 4 more) exists" in fails(
        ["decode", "--model", model, str(codes), "--out", str(tmp_path / "arrays")], capsys
    )
    assert (tmp_path / "arrays" / "digits.npy_0.png").read_bytes() == before


def test_decode_writes_a_forged_files_names_only_inside_its_folder(
    files, tmp_path, trained, capsys
):
    # A code file carries its image names; anyone who has the model can write one. Decode must
    # not take them as paths (../x.png, /abs/x.PNG) nor let two of them overwrite each other.
    model = str(files / "model.pt")
    codes_path = tmp_path / "codes.npz"
    main(["encode", "--model", model, str(files / "digits"), "--out", str(codes_path)])
    codes, _ = load_codes(codes_path, trained)
    hostile = ["../../escape.png", str(tmp_path / "abs.PNG"), "..\\win.png", ".hidden", "a b?.png"]
    save_codes(codes, hostile, trained, tmp_path / "forged.npz")
    out = tmp_path / "deep" / "out"
    main(["decode", "--model", model, str(tmp_path / "forged.npz"), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "a_b.png",
        "abs.png",
        "escape.png",
        "hidden.png",
        "win.png",
    ]
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == sorted(p.name for p in out.iterdir())
    save_codes(codes, ["x.png", "sub/X.png", "b", "c", "d"], trained, tmp_path / "twice.npz")
    message = fails(["decode", "--model", model, str(tmp_path / "twice.npz"), "--out",
                     str(tmp_path / "o")], capsys)  # fmt: skip
    assert "'x.png' and 'sub/X.png' would both be written as X.png" in message
    assert not (tmp_path / "o").exists()  # nothing written on failure


def test_impute_writes_the_filled_images(files, tmp_path):
    out = tmp_path / "filled"
    main(["impute", "--model", str(files / "model.pt"), str(files / "digits"), "--mask",
          "center", "--data", str(files / "splits.npz"), "--out", str(out)])  # fmt: skip
    filled = load_images(out, SHAPE).images
    original = load_images(files / "digits", SHAPE).images
    assert np.array_equal(filled[:, :, :7], original[:, :, :7])  # known rows untouched
    assert not np.array_equal(filled, original)


def test_bad_input_is_one_line_exit_2(files, tmp_path, capsys):
    model = str(files / "model.pt")
    digits = str(files / "digits")
    (tmp_path / "empty").mkdir()
    assert "empty" in fails(["encode", "--model", model, str(tmp_path / "empty"), "--out",
                             str(tmp_path / "c.npz")], capsys)  # fmt: skip
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "notes.txt").write_text("hello")
    assert "notes.txt is not an image" in fails(["impute", "--model", model,
                                                 str(tmp_path / "mixed"), "--mask", "center",
                                                 "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    Image.fromarray(np.zeros((14, 14), np.uint8), mode="L").save(tmp_path / "small.png")
    small = str(tmp_path / "small.png")
    assert "14x14" in fails(["impute", "--model", model, digits, "--mask", small,
                             "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert "random:P" in fails(["impute", "--model", model, digits, "--mask", "random:7",
                                "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert "model file not found" in fails(
        ["generate", "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "g.png")], capsys
    )
    assert ".png (a grid) or .npy" in fails(
        ["generate", "--model", model, "--out", str(tmp_path / "g.jpg")], capsys
    )
    save_model(ConvVAE(dataclasses.replace(TINY, latent_dim=8)), tmp_path / "other.pt")
    main(["encode", "--model", model, digits, "--out", str(tmp_path / "c.npz")])
    assert "latent_dim=4 (model has 8)" in fails(
        ["decode", "--model", str(tmp_path / "other.pt"), str(tmp_path / "c.npz"), "--out",
         str(tmp_path / "o")], capsys)  # fmt: skip
    assert not (tmp_path / "o").exists()  # nothing written on failure


def test_registry_uri_errors_name_the_store(tmp_path):
    import mlflow

    store = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db")
    try:
        # Which model, in which store, and what that store holds instead.
        with pytest.raises(TrackingError, match="no registered model named 'convvae-absent'") as e:
            load_model_ref("models:/convvae-absent/1", store)
        assert f"in sqlite:///{tmp_path}/mlflow.db; registered models: none" in str(e.value)
    finally:
        mlflow.set_tracking_uri(None)


def test_an_explicit_params_file_that_is_missing_is_an_error_not_another_store(tmp_path, capsys):
    message = fails(["generate", "--model", "models:/convvae-mnist-5k@champion",
                     "--params", str(tmp_path / "typo.yaml"), "--out", str(tmp_path / "g.png")],
                    capsys)  # fmt: skip
    assert "typo.yaml: file not found" in message


def test_decoded_file_names_fit_any_file_system():
    from convvae.data.image_files import png_file_name

    # 300 CJK characters are 900 bytes: file systems allow 255, so names are cut by bytes.
    name = png_file_name("字" * 300 + ".png")
    assert len(name.encode()) <= 204 and name.endswith(".png") and name.startswith("字")
    with pytest.raises(DataError, match="leaves no file name"):  # never hidden, never empty
        png_file_name("....png")
