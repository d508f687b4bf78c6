"""The `convvae` command: one subcommand per use, each a thin call into the library.

User-fixable errors print as one line (convvae.errors.exit_on_error); --debug shows tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from convvae.errors import debug_requested, exit_on_error


def _check_params(args: argparse.Namespace) -> None:
    from convvae.config import load_params

    params = load_params(args.params)
    print(json.dumps(params.to_dict(), indent=2))


def _inspect(args: argparse.Namespace) -> None:
    from convvae.model import count_parameters, load_model

    model = load_model(args.model)
    print(json.dumps(dataclasses.asdict(model.arch), indent=2))
    print(f"parameters: {count_parameters(model):,}")


def _promote(args: argparse.Namespace) -> None:
    import torch

    from convvae.anomaly import ScoreSpec
    from convvae.config import load_params
    from convvae.data import load_splits
    from convvae.promote import promote
    from convvae.tracking import Tracker

    params = load_params(args.params)
    images = torch.from_numpy(load_splits(args.data).test.images)
    tracker = Tracker(params.tracking)
    # The samples and noise of the test metrics that evaluate tagged the versions with.
    spec = ScoreSpec(samples=params.evaluate.iwae_samples, noise_seed=params.evaluate.seed)
    decision = promote(tracker, args.model, images, args.metric, args.dry_run, spec)
    print(f"model {decision.model} ({tracker.uri}), metric {decision.metric} (lower is better)")
    comparison = decision.comparison
    if comparison is not None:
        print(f"{'version':<22}{'mean':>12}")
        print(f"{'champion  v' + decision.champion:<22}{comparison.champion_mean:>12.3f}")
        print(f"{'challenger v' + decision.challenger:<22}{comparison.challenger_mean:>12.3f}")
        n_images, n_resamples = comparison.n_images, comparison.n_resamples
        print(f"paired bootstrap over {n_images} test images, {n_resamples} resamples")
    verdict = "promote" if decision.promoted else "keep the champion"
    prefix = "dry run, would " if args.dry_run else ""
    print(f"{prefix}{verdict}: v{decision.challenger}: {decision.reason}")


def _image_shape(model) -> tuple[int, int, int]:
    """(C, H, W) of the images a ConvVAE takes."""
    arch = model.arch
    return (arch.image_channels, arch.image_size, arch.image_size)


def _generate(args: argparse.Namespace) -> None:
    from convvae.errors import ConfigError
    from convvae.evaluate import sample_images
    from convvae.images import write_images
    from convvae.modelref import load_model_ref

    if args.n < 1 or args.temperature <= 0:
        raise ConfigError("--n must be >= 1 and --temperature > 0")
    model = load_model_ref(args.model)
    write_images(sample_images(model, args.n, args.seed, args.temperature), args.out)
    print(f"{args.n} samples (temperature {args.temperature}, seed {args.seed}) → {args.out}")


def _interpolate(args: argparse.Namespace) -> None:
    import torch

    from convvae.errors import ConfigError
    from convvae.generate import interpolate
    from convvae.images import load_images, write_images
    from convvae.modelref import load_model_ref

    if args.steps < 2:
        raise ConfigError("--steps must be >= 2")
    model = load_model_ref(args.model)
    ends = []
    for path, index, option in (
        (args.a, args.index_a, "--index-a"),
        (args.b, args.index_b, "--index-b"),
    ):
        batch = load_images(path, _image_shape(model))
        if not 0 <= index < len(batch.images):
            raise ConfigError(f"{option} {index}: {path} holds {len(batch.images)} image(s)")
        ends.append(torch.tensor(batch.images[index]))
    write_images(interpolate(model, *ends, args.steps), args.out)
    print(f"latent walk of {args.steps} steps → {args.out}")


def _encode(args: argparse.Namespace) -> None:
    import torch

    from convvae.compress import encode, save_codes
    from convvae.images import load_images
    from convvae.modelref import load_model_ref

    model = load_model_ref(args.model)
    batch = load_images(args.images, _image_shape(model))
    codes = encode(model, torch.from_numpy(batch.images), args.precision)
    save_codes(codes, batch.names, model.arch, args.out)
    print(
        f"{len(batch.names)} images → {args.out}: {codes.bytes_per_image():g} bytes of code per "
        f"image ({args.precision})"
    )


def _decode(args: argparse.Namespace) -> None:
    from convvae.compress import decode, load_codes
    from convvae.errors import DataError
    from convvae.images import to_uint8, write_png_folder
    from convvae.modelref import load_model_ref

    model = load_model_ref(args.model)
    if not os.path.isfile(args.codes):
        raise DataError(f"{args.codes}: no such file; pass an .npz written by `convvae encode`")
    codes, names = load_codes(args.codes, model.arch)
    write_png_folder(to_uint8(decode(model, codes)), names, args.out)
    print(f"{len(names)} images ({codes.precision} codes) → {args.out}/")


def _impute(args: argparse.Namespace) -> None:
    import torch

    from convvae.data import load_splits
    from convvae.errors import ConfigError
    from convvae.images import load_images, to_uint8, write_png_folder
    from convvae.impute import impute, make_mask, mean_fill
    from convvae.modelref import load_model_ref

    if args.iterations < 1:
        raise ConfigError("--iterations must be >= 1")
    model = load_model_ref(args.model)
    shape = _image_shape(model)
    batch = load_images(args.images, shape)
    missing = make_mask(args.mask, len(batch.images), shape, args.seed)
    fill = mean_fill(torch.from_numpy(load_splits(args.data).train.images))
    if fill.shape != shape:
        raise ConfigError(f"--data {args.data}: images of shape {tuple(fill.shape)}, not {shape}")
    filled = impute(model, torch.from_numpy(batch.images), missing, fill, args.iterations)
    write_png_folder(to_uint8(filled), batch.names, args.out)
    print(
        f"{len(batch.names)} images, {missing.float().mean().item():.0%} of pixels imputed "
        f"→ {args.out}/"
    )


def _score(args: argparse.Namespace) -> None:
    import csv
    import io

    from convvae.anomaly import score_images
    from convvae.files import atomic_path
    from convvae.images import load_images
    from convvae.modelref import load_scorer_ref

    model, stored = load_scorer_ref(args.model)
    batch = load_images(args.images, _image_shape(model))
    decided = stored.decide(score_images(model, batch.images, stored.spec))
    scores, flagged = decided["score"], decided["is_anomaly"]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["file", "score", "normalized_score", "is_anomaly"])
    writer.writerows(
        (name, f"{score:.4f}", f"{p_value:.4f}", int(flag))
        for name, score, p_value, flag in zip(
            batch.names, scores, decided["normalized_score"], flagged, strict=True
        )
    )
    if args.out is None:
        print(table.getvalue(), end="")
        return
    with atomic_path(args.out) as tmp:
        tmp.write_text(table.getvalue())
    normal = "every class" if stored.normal_class is None else f"class {stored.normal_class}"
    print(
        f"{len(scores)} images scored ({stored.spec.name}, threshold {stored.threshold:.2f}, "
        f"normal: {normal}): {int(flagged.sum())} anomalous → {args.out}"
    )


MODEL_HELP = "a model file (models/model.pt), models:/NAME@alias or models:/NAME/VERSION"
IMAGES_HELP = "a folder of PNGs, a PNG, an .npy or .npz"


def _add_check_params(commands, common) -> None:
    check = commands.add_parser(
        "check-params", help="validate params.yaml and print it resolved", parents=[common]
    )
    check.add_argument("params", nargs="?", default="params.yaml")
    check.set_defaults(action=_check_params)
    inspect = commands.add_parser(
        "inspect", help="print a model file's architecture", parents=[common]
    )
    inspect.add_argument("model", help="a .pt file written by the train stage")
    inspect.set_defaults(action=_inspect)


def _add_promote(commands, common) -> None:
    promote = commands.add_parser(
        "promote",
        help="move @champion to the newest version if it is better by more than noise",
        parents=[common],
    )
    promote.add_argument("--model", required=True, help="registered model, e.g. convvae-mnist-5k")
    promote.add_argument("--metric", default="test_neg_elbo", help="test_neg_elbo | test_iwae_nll")
    promote.add_argument("--dry-run", action="store_true", help="compare only; change nothing")
    promote.add_argument("--params", default="params.yaml", help="tracking and anomaly sections")
    promote.add_argument(
        "--data", default="data/prepared/splits.npz", help="held-out images (the test split)"
    )
    promote.set_defaults(action=_promote)


def _add_generation(commands, common) -> None:
    generate = commands.add_parser(
        "generate", help="sample images from the prior (grid PNG or .npy)", parents=[common]
    )
    generate.add_argument("--model", required=True, help=MODEL_HELP)
    generate.add_argument("--n", type=int, default=64, help="number of samples")
    generate.add_argument("--out", required=True, help=".png grid or .npy float pixels")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--temperature", type=float, default=1.0, help="prior std multiplier")
    generate.set_defaults(action=_generate)
    walk = commands.add_parser(
        "interpolate", help="latent walk between two images", parents=[common]
    )
    walk.add_argument("--model", required=True, help=MODEL_HELP)
    walk.add_argument("a", help="start: a PNG, .npy or .npz (pick an image with --index-a)")
    walk.add_argument("b", help="end: a PNG, .npy or .npz (pick an image with --index-b)")
    walk.add_argument("--index-a", type=int, default=0)
    walk.add_argument("--index-b", type=int, default=0)
    walk.add_argument("--steps", type=int, default=10)
    walk.add_argument("--out", required=True, help=".png row or .npy float pixels")
    walk.set_defaults(action=_interpolate)


def _add_compression(commands, common) -> None:
    encode = commands.add_parser(
        "encode", help="compress images to latent codes (.npz)", parents=[common]
    )
    encode.add_argument("--model", required=True, help=MODEL_HELP)
    encode.add_argument("images", help=IMAGES_HELP)
    encode.add_argument("--out", required=True, help="the code file, .npz")
    encode.add_argument("--precision", choices=["float16", "float32", "int8"], default="float16")
    encode.set_defaults(action=_encode)
    decode = commands.add_parser("decode", help="decode latent codes to PNGs", parents=[common])
    decode.add_argument("--model", required=True, help=MODEL_HELP)
    decode.add_argument("codes", help="an .npz written by `convvae encode`")
    decode.add_argument("--out", required=True, help="folder for the PNGs")
    decode.set_defaults(action=_decode)


def _add_impute(commands, common) -> None:
    imputer = commands.add_parser("impute", help="fill missing pixels of images", parents=[common])
    imputer.add_argument("--model", required=True, help=MODEL_HELP)
    imputer.add_argument("images", help=IMAGES_HELP)
    imputer.add_argument(
        "--mask", required=True, help="center | left-half | random:P | MASK.png (white = missing)"
    )
    imputer.add_argument("--out", required=True, help="folder for the imputed PNGs")
    imputer.add_argument("--iterations", type=int, default=5, help="encode → decode rounds")
    imputer.add_argument("--seed", type=int, default=0, help="for random:P masks")
    imputer.add_argument(
        "--data",
        default="data/prepared/splits.npz",
        help="its training split's mean starts the gaps",
    )
    imputer.set_defaults(action=_impute)


def _add_score(commands, common) -> None:
    scorer = commands.add_parser(
        "score", help="anomaly scores of images, flagged at the model's threshold", parents=[common]
    )
    scorer.add_argument(
        "--model",
        required=True,
        help="models:/NAME@alias, models:/NAME/VERSION, or a model file with threshold.json "
        "beside it (models/model.pt, models/anomaly/class_3/model.pt)",
    )
    scorer.add_argument("images", help=IMAGES_HELP)
    scorer.add_argument(
        "--out",
        help="CSV file (file, score, normalized_score = conformal p-value, is_anomaly); "
        "default: stdout",
    )
    scorer.set_defaults(action=_score)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `convvae` (subcommands call into the library)."""
    parser = argparse.ArgumentParser(prog="convvae", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    # Also accepted after the subcommand; SUPPRESS keeps it from resetting the flag given before.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_check_params,
        _add_promote,
        _add_generation,
        _add_compression,
        _add_impute,
        _add_score,
    ):
        add(commands, common)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `convvae` console script."""
    args = build_parser().parse_args(argv)
    exit_on_error(lambda: args.action(args), args.debug or debug_requested())


if __name__ == "__main__":
    main()
