"""The `convvae` command: one subcommand per use, each a thin call into the library.

User-fixable errors print as one line (convvae.errors.exit_on_error); --debug shows tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from convvae.errors import debug_requested, exit_on_error
from convvae.runtime.allocator import keep_freed_memory


def _check_params(args: argparse.Namespace) -> None:
    from convvae.config import load_params

    params = load_params(args.params)
    print(json.dumps(params.to_dict(), indent=2))


def _inspect(args: argparse.Namespace) -> None:
    from convvae.model.vae import count_parameters, load_model

    model = load_model(args.model)
    print(json.dumps(dataclasses.asdict(model.arch), indent=2))
    print(f"parameters: {count_parameters(model):,}")


def _presets(args: argparse.Namespace) -> None:
    from convvae.model.vae import preset_table

    print(f"{'image':<12}{'conv channels':<30}{'latent':>7}{'parameters':>13}{'MFLOP/image':>13}")
    for row in preset_table():
        channels = ", ".join(map(str, row["conv_channels"]))
        print(
            f"{row['image']:<12}{channels:<30}{row['latent_dim']:>7}{row['parameters']:>13,}"
            f"{row['forward_mflops_per_image']:>13,.1f}"
        )


def _promote(args: argparse.Namespace) -> None:
    import torch

    from convvae.anomaly.scores import ScoreSpec
    from convvae.anomaly.thresholds import selection_and_calibration
    from convvae.config import load_params
    from convvae.data.sources import load_splits
    from convvae.tracking.promote import promote
    from convvae.tracking.tracker import Tracker

    params = load_params(args.params)
    # The validation images that chose epochs: never the test split, never calibration images.
    selection, _ = selection_and_calibration(load_splits(args.data).val.images)
    images = torch.from_numpy(selection)
    tracker = Tracker(params.tracking)
    # One sample count everywhere: the anomaly section's, which the served score uses too.
    spec = ScoreSpec(samples=params.anomaly.samples, noise_seed=params.anomaly.noise_seed)
    decision = promote(tracker, args.model, images, args.metric, args.dry_run, spec)
    print(
        f"model {decision.model} ({tracker.shown_uri}), metric {decision.metric} (lower is better)"
    )
    comparison = decision.comparison
    if comparison is not None:
        print(f"{'version':<22}{'mean':>12}")
        print(f"{'champion  v' + decision.champion:<22}{comparison.champion_mean:>12.3f}")
        print(f"{'challenger v' + decision.challenger:<22}{comparison.challenger_mean:>12.3f}")
        n_images, n_resamples = comparison.n_images, comparison.n_resamples
        print(f"paired bootstrap over {n_images} selection images, {n_resamples} resamples")
    for check in decision.checks:
        print(
            f"v{check.version} {check.score}: flags {check.realised_fpr:.1%} of normal selection "
            f"images (limit {check.fpr_limit:.1%}), out-of-domain ROC-AUC "
            f"{check.out_of_domain_roc_auc:.3f}"
        )
    verdict = "promote" if decision.promoted else "keep the champion"
    prefix = "dry run, would " if args.dry_run else ""
    print(f"{prefix}{verdict}: v{decision.challenger}: {decision.reason}")


def _image_shape(model) -> tuple[int, int, int]:
    """(C, H, W) of the images a ConvVAE takes."""
    return model.arch.image_shape


def _resize(model, asked: bool):
    """``--resize``: as the model's prepare stage did (its stored preprocessing), else a plain
    bilinear resize to the model's size; None when not asked (sizes must then match)."""
    from convvae.data.images import Resize

    if not asked:
        return None
    done = model.preprocessing or {}
    if done.get("image_size"):
        crop = done.get("crop")
        return Resize(tuple(done["image_size"]), tuple(crop) if crop else None)
    return Resize(tuple(model.arch.image_size))


def _generate(args: argparse.Namespace) -> None:
    from convvae.data.images import write_images
    from convvae.errors import ConfigError
    from convvae.tracking.modelref import load_model_ref
    from convvae.uses.evaluation import sample_images

    if args.n < 1 or args.temperature <= 0:
        raise ConfigError("--n must be >= 1 and --temperature > 0")
    model = load_model_ref(args.model, _registry_tracking(args))
    write_images(sample_images(model, args.n, args.seed, args.temperature), args.out)
    print(f"{args.n} samples (temperature {args.temperature}, seed {args.seed}) → {args.out}")


def _interpolate(args: argparse.Namespace) -> None:
    import torch

    from convvae.data.images import load_images, write_images
    from convvae.errors import ConfigError
    from convvae.tracking.modelref import load_model_ref
    from convvae.uses.generate import interpolate

    if args.steps < 2:
        raise ConfigError("--steps must be >= 2")
    model = load_model_ref(args.model, _registry_tracking(args))
    ends = []
    for path, index, option in (
        (args.a, args.index_a, "--index-a"),
        (args.b, args.index_b, "--index-b"),
    ):
        batch = load_images(path, _image_shape(model), _resize(model, args.resize))
        if not 0 <= index < len(batch.images):
            raise ConfigError(f"{option} {index}: {path} holds {len(batch.images)} image(s)")
        ends.append(torch.tensor(batch.images[index]))
    write_images(interpolate(model, *ends, args.steps), args.out)
    print(f"latent walk of {args.steps} steps → {args.out}")


def _encode(args: argparse.Namespace) -> None:
    import torch

    from convvae.data.images import load_images
    from convvae.tracking.modelref import load_model_ref
    from convvae.uses.compress import encode, save_codes

    model = load_model_ref(args.model, _registry_tracking(args))
    batch = load_images(args.images, _image_shape(model), _resize(model, args.resize))
    codes = encode(model, torch.from_numpy(batch.images), args.precision)
    save_codes(codes, batch.names, model, args.out)
    file_bytes = os.path.getsize(args.out) / len(batch.names)
    print(
        f"{len(batch.names)} images → {args.out}: {codes.bytes_per_image():g} bytes of code per "
        f"image ({args.precision}); the file, with names and side information, "
        f"{file_bytes:.1f} bytes per image"
    )


def _decode(args: argparse.Namespace) -> None:
    from convvae.data.images import to_uint8, write_png_folder
    from convvae.errors import DataError
    from convvae.tracking.modelref import load_model_ref
    from convvae.uses.compress import decode, load_codes

    model = load_model_ref(args.model, _registry_tracking(args))
    if not os.path.isfile(args.codes):
        raise DataError(f"{args.codes}: no such file; pass an .npz written by `convvae encode`")
    codes, names = load_codes(args.codes, model)
    write_png_folder(to_uint8(decode(model, codes)), names, args.out)
    print(f"{len(names)} images ({codes.precision} codes) → {args.out}/")


def _impute(args: argparse.Namespace) -> None:
    import torch

    from convvae.data.images import load_images, to_uint8, write_png_folder
    from convvae.data.sources import load_splits
    from convvae.errors import ConfigError
    from convvae.tracking.modelref import load_model_ref
    from convvae.uses.impute import impute, make_mask, mean_fill

    if args.iterations < 1:
        raise ConfigError("--iterations must be >= 1")
    model = load_model_ref(args.model, _registry_tracking(args))
    shape = _image_shape(model)
    batch = load_images(args.images, shape, _resize(model, args.resize))
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
    import contextlib
    import csv
    import itertools
    import resource

    from convvae.anomaly.scores import score_images
    from convvae.benchmark.defects import check_map_names, map_scale, write_maps
    from convvae.data.images import image_names, iter_images
    from convvae.runtime.files import atomic_path
    from convvae.runtime.progress import live_bar
    from convvae.tracking.modelref import load_scorer_ref

    model, stored = load_scorer_ref(args.model, _registry_tracking(args))
    if args.maps is not None:
        check_map_names(image_names(args.images))
    total, batches = iter_images(args.images, _image_shape(model), _resize(model, args.resize))
    # The first batch is read before any output: a wrong size or mode is one error line alone.
    batches = itertools.chain([next(batches)], batches)
    flagged = 0
    high = map_scale(model) if args.maps is not None else 1.0  # one colour scale for all
    # Rows go to a temporary file renamed at the end: a bad file halfway leaves no half a CSV.
    with contextlib.ExitStack() as stack:
        if args.out is None:
            table = sys.stdout
        else:
            table = stack.enter_context(stack.enter_context(atomic_path(args.out)).open("w"))
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["file", "score", "normalized_score", "is_anomaly"])
        bar = stack.enter_context(live_bar(total))
        for batch in batches:  # bounded memory: one batch of images at a time
            decided = stored.decide(score_images(model, batch.images, stored.spec))
            if args.maps is not None:
                write_maps(model, batch.images, batch.names, args.maps, high)
            writer.writerows(
                (name, f"{score:.4f}", f"{p_value:.4f}", int(flag))
                for name, score, p_value, flag in zip(
                    batch.names,
                    decided["score"],
                    decided["normalized_score"],
                    decided["is_anomaly"],
                    strict=True,
                )
            )
            flagged += int(decided["is_anomaly"].sum())
            bar.update(len(batch.names))
    if args.out is None:
        return
    normal = "every class" if stored.normal_class is None else f"class {stored.normal_class}"
    maps = f"; maps → {args.maps}/" if args.maps is not None else ""
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        f"{total} images scored ({stored.spec.name}, threshold {stored.threshold:.2f}, "
        f"normal: {normal}): {flagged} anomalous → {args.out}{maps}; peak memory "
        f"{peak_mib:.0f} MiB"
    )


def _export(args: argparse.Namespace) -> None:
    import time
    from pathlib import Path

    from convvae.anomaly.export import export_onnx
    from convvae.runtime.files import write_json
    from convvae.tracking.modelref import load_scorer_ref

    model, stored = load_scorer_ref(args.model, _registry_tracking(args))
    out = Path(args.out)
    started = time.perf_counter()
    export_onnx(model, stored.spec, out)
    record = out.with_suffix(".threshold.json")
    write_json(stored.record, record)
    print(
        f"{out}: ONNX graph pixels (N, {', '.join(map(str, model.arch.image_shape))}) in [0, 1] → "
        f"score ({stored.spec.name}), anomaly_map; threshold record {record} "
        f"({time.perf_counter() - started:.1f} s)"
    )


def _registry_tracking(args: argparse.Namespace):
    """For a models:/ reference: the tracking section of --params (of params.yaml where it
    exists when --params is not given; else the default store), so the CLI finds what the
    stages registered. Only that section is read."""
    from convvae.config import load_tracking
    from convvae.tracking.modelref import REGISTRY_PREFIX

    if not args.model.startswith(REGISTRY_PREFIX):
        return None
    if args.params is None:
        return load_tracking(DEFAULT_PARAMS) if os.path.isfile(DEFAULT_PARAMS) else None
    return load_tracking(args.params)  # given: a missing file is an error, not another store


DEFAULT_PARAMS = "params.yaml"
MODEL_HELP = "a model file (models/model.pt), models:/NAME@alias or models:/NAME/VERSION"
IMAGES_HELP = "a folder of images (PNG, JPEG, BMP, TIFF), one image, an .npy or .npz"
RESIZE_HELP = (
    "resize (and crop) image files to the model's size as the prepare stage did; without it, "
    "a file of another size is an error"
)


def _add_check_params(commands, common, registry) -> None:
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
    presets = commands.add_parser(
        "presets",
        help="the default architecture per image size: parameters and FLOPs per image",
        parents=[common],
    )
    presets.set_defaults(action=_presets)


def _add_promote(commands, common, registry) -> None:
    promote = commands.add_parser(
        "promote",
        help="move @champion to the newest version if it is better by more than noise",
        parents=[common],
    )
    promote.add_argument("--model", required=True, help="registered model, e.g. convvae-mnist-5k")
    promote.add_argument("--metric", default="neg_elbo", help="neg_elbo | iwae_nll")
    promote.add_argument("--dry-run", action="store_true", help="compare only; change nothing")
    promote.add_argument("--params", default="params.yaml", help="tracking and anomaly sections")
    promote.add_argument(
        "--data",
        default="data/prepared/splits.npz",
        help="prepared splits: versions are compared on the selection half of validation",
    )
    promote.set_defaults(action=_promote)


def _add_generation(commands, common, registry) -> None:
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


def _add_compression(commands, common, registry) -> None:
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


def _add_impute(commands, common, registry) -> None:
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


def _add_export(commands, common, registry) -> None:
    exporter = commands.add_parser(
        "export",
        help="the model's score and anomaly map as an ONNX graph, for runtimes without PyTorch",
        parents=[common, registry],
    )
    exporter.add_argument(
        "--model", required=True, help="as for score: a model file with threshold.json, models:/"
    )
    exporter.add_argument("--format", choices=["onnx"], default="onnx")
    exporter.add_argument(
        "--out", required=True, help="the .onnx file; its threshold record goes beside it"
    )
    exporter.set_defaults(action=_export)


def _add_score(commands, common, registry) -> None:
    scorer = commands.add_parser(
        "score",
        help="anomaly scores of images, flagged at the model's threshold",
        parents=[common, registry],
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
    scorer.add_argument("--resize", action="store_true", help=RESIZE_HELP)
    scorer.add_argument(
        "--maps",
        help="folder for each image's anomaly map: <name>_map.png (overlay) and <name>_map.npy",
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
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument(
        "--params",
        help="for a models:/ reference, the store its tracking section names, as the stages "
        f"and `promote` use (default: {DEFAULT_PARAMS} where it exists)",
    )
    for add in (
        _add_check_params,
        _add_promote,
        _add_generation,
        _add_compression,
        _add_impute,
        _add_score,
        _add_export,
    ):
        add(commands, common, registry)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `convvae` console script."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # scoring's large temporary tensors (convvae.runtime.allocator)
    exit_on_error(lambda: args.action(args), args.debug or debug_requested())


if __name__ == "__main__":
    main()
