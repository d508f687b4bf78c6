"""The other uses' commands: `convvae generate`, `interpolate`, `encode`, `decode`, `impute`."""

from __future__ import annotations

import argparse
import os

from convvae.cli.common import (
    IMAGES_HELP,
    MODEL_HELP,
    RESIZE_HELP,
    image_shape,
    refuse_to_replace,
    registry_tracking,
    resize_option,
)


def _generate(args: argparse.Namespace) -> None:
    from convvae.data.images import write_images
    from convvae.errors import ConfigError
    from convvae.tracking.modelref import load_model_ref
    from convvae.uses.evaluation import sample_images

    if args.n < 1 or args.temperature <= 0:
        raise ConfigError("--n must be >= 1 and --temperature > 0")
    refuse_to_replace([args.out], args)
    model = load_model_ref(args.model, registry_tracking(args))
    write_images(sample_images(model, args.n, args.seed, args.temperature), args.out)
    print(f"{args.n} samples (temperature {args.temperature}, seed {args.seed}) → {args.out}")


def _interpolate(args: argparse.Namespace) -> None:
    import torch

    from convvae.data.image_files import load_images
    from convvae.data.images import write_images
    from convvae.errors import ConfigError
    from convvae.tracking.modelref import load_model_ref
    from convvae.uses.generate import interpolate

    if args.steps < 2:
        raise ConfigError("--steps must be >= 2")
    refuse_to_replace([args.out], args)
    model = load_model_ref(args.model, registry_tracking(args))
    ends = []
    for path, index, option in (
        (args.a, args.index_a, "--index-a"),
        (args.b, args.index_b, "--index-b"),
    ):
        batch = load_images(path, image_shape(model), resize_option(model, args.resize))
        if not 0 <= index < len(batch.images):
            raise ConfigError(f"{option} {index}: {path} holds {len(batch.images)} image(s)")
        ends.append(torch.tensor(batch.images[index]))
    write_images(interpolate(model, *ends, args.steps), args.out)
    print(f"latent walk of {args.steps} steps → {args.out}")


def _encode(args: argparse.Namespace) -> None:
    import torch

    from convvae.data.image_files import load_images
    from convvae.tracking.modelref import load_model_ref
    from convvae.uses.compress import encode, save_codes

    refuse_to_replace([args.out], args)
    model = load_model_ref(args.model, registry_tracking(args))
    batch = load_images(args.images, image_shape(model), resize_option(model, args.resize))
    codes = encode(model, torch.from_numpy(batch.images), args.precision)
    save_codes(codes, batch.names, model, args.out)
    file_bytes = os.path.getsize(args.out) / len(batch.names)
    print(
        f"{len(batch.names)} images → {args.out}: {codes.bytes_per_image():g} bytes of code per "
        f"image ({args.precision}); the file, with names and side information, "
        f"{file_bytes:.1f} bytes per image"
    )


def _decode(args: argparse.Namespace) -> None:
    from convvae.data.image_files import png_file_name, write_png_folder
    from convvae.data.images import to_uint8
    from convvae.errors import DataError
    from convvae.tracking.modelref import load_model_ref
    from convvae.uses.compress import decode, load_codes

    model = load_model_ref(args.model, registry_tracking(args))
    if not os.path.isfile(args.codes):
        raise DataError(f"{args.codes}: no such file; pass an .npz written by `convvae encode`")
    codes, names = load_codes(args.codes, model)
    refuse_to_replace([os.path.join(args.out, png_file_name(name)) for name in names], args)
    write_png_folder(to_uint8(decode(model, codes)), names, args.out)
    print(f"{len(names)} images ({codes.precision} codes) → {args.out}/")


def _impute(args: argparse.Namespace) -> None:
    import torch

    from convvae.data.image_files import load_images, png_file_name, write_png_folder
    from convvae.data.images import to_uint8
    from convvae.data.splits import load_splits
    from convvae.errors import ConfigError
    from convvae.tracking.modelref import load_model_ref
    from convvae.uses.impute import impute, make_mask, mean_fill

    if args.iterations < 1:
        raise ConfigError("--iterations must be >= 1")
    model = load_model_ref(args.model, registry_tracking(args))
    shape = image_shape(model)
    batch = load_images(args.images, shape, resize_option(model, args.resize))
    refuse_to_replace([os.path.join(args.out, png_file_name(n)) for n in batch.names], args)
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


def add_generation(commands, common, registry) -> None:
    generate = commands.add_parser(
        "generate",
        help="sample images from the prior (grid PNG or .npy)",
        parents=[common, registry],
    )
    generate.add_argument("--model", required=True, help=MODEL_HELP)
    generate.add_argument("--n", type=int, default=64, help="number of samples")
    generate.add_argument("--out", required=True, help=".png grid or .npy float pixels")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--temperature", type=float, default=1.0, help="prior std multiplier")
    generate.set_defaults(action=_generate)
    walk = commands.add_parser(
        "interpolate", help="latent walk between two images", parents=[common, registry]
    )
    walk.add_argument("--model", required=True, help=MODEL_HELP)
    walk.add_argument("--resize", action="store_true", help=RESIZE_HELP)
    walk.add_argument("a", help="start: a PNG, .npy or .npz (pick an image with --index-a)")
    walk.add_argument("b", help="end: a PNG, .npy or .npz (pick an image with --index-b)")
    walk.add_argument("--index-a", type=int, default=0)
    walk.add_argument("--index-b", type=int, default=0)
    walk.add_argument("--steps", type=int, default=10)
    walk.add_argument("--out", required=True, help=".png row or .npy float pixels")
    walk.set_defaults(action=_interpolate)


def add_compression(commands, common, registry) -> None:
    encode = commands.add_parser(
        "encode", help="compress images to latent codes (.npz)", parents=[common, registry]
    )
    encode.add_argument("--model", required=True, help=MODEL_HELP)
    encode.add_argument("--resize", action="store_true", help=RESIZE_HELP)
    encode.add_argument("images", help=IMAGES_HELP)
    encode.add_argument("--out", required=True, help="the code file, .npz")
    encode.add_argument("--precision", choices=["float16", "float32", "int8"], default="float16")
    encode.set_defaults(action=_encode)
    decode = commands.add_parser(
        "decode", help="decode latent codes to PNGs", parents=[common, registry]
    )
    decode.add_argument("--model", required=True, help=MODEL_HELP)
    decode.add_argument("codes", help="an .npz written by `convvae encode`")
    decode.add_argument("--out", required=True, help="folder for the PNGs")
    decode.set_defaults(action=_decode)


def add_impute(commands, common, registry) -> None:
    imputer = commands.add_parser(
        "impute", help="fill missing pixels of images", parents=[common, registry]
    )
    imputer.add_argument("--model", required=True, help=MODEL_HELP)
    imputer.add_argument("--resize", action="store_true", help=RESIZE_HELP)
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
