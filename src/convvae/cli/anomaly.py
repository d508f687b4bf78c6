"""The anomaly commands: `convvae score`, `convvae export` and `convvae promote`."""

from __future__ import annotations

import argparse
import sys
import typing

from convvae.cli.common import (
    IMAGES_HELP,
    RESIZE_HELP,
    image_shape,
    refuse_to_replace,
    registry_tracking,
    resize_option,
)
from convvae.config import PromoteMetric


def _promote(args: argparse.Namespace) -> None:
    from convvae.config import load_params
    from convvae.data.splits import load_splits, selection_and_calibration
    from convvae.tracking.promote import promote
    from convvae.tracking.tracker import Tracker

    params = load_params(args.params)
    # The validation images, never the test split (each check on the half that did not shape it).
    halves = selection_and_calibration(load_splits(args.data).val.images)
    tracker = Tracker(params.tracking)
    # One sample count everywhere: the anomaly section's, which the served score uses too.
    decision = promote(tracker, args.model, halves, args.metric, args.dry_run, params.anomaly)
    print(
        f"model {decision.model} ({tracker.shown_uri}), metric {decision.metric} (lower is better)"
    )
    comparison = decision.comparison
    if comparison is not None:
        print(f"{'version':<22}{'mean':>12}")
        print(f"{'champion  v' + decision.champion:<22}{comparison.champion_mean:>12.3f}")
        print(f"{'challenger v' + decision.challenger:<22}{comparison.challenger_mean:>12.3f}")
        n_images, n_resamples = comparison.n_images, comparison.n_resamples
        print(f"paired bootstrap over {n_images} calibration images, {n_resamples} resamples")
    for check in decision.checks:
        print(
            f"v{check.version} {check.score}: flags {check.realised_fpr:.1%} of normal selection "
            f"images (limit {check.fpr_limit:.1%}), out-of-domain ROC-AUC "
            f"{check.out_of_domain_roc_auc:.3f}"
        )
    verdict = "promote" if decision.promoted else "keep the champion"
    prefix = "dry run, would " if args.dry_run else ""
    print(f"{prefix}{verdict}: v{decision.challenger}: {decision.reason}")


def _score(args: argparse.Namespace) -> None:
    import contextlib
    import itertools
    import resource
    from pathlib import Path

    from convvae.anomaly.map_images import check_map_names, map_stem
    from convvae.anomaly.score_files import write_scores
    from convvae.data.image_files import image_names, iter_images
    from convvae.runtime.files import atomic_path
    from convvae.runtime.progress import live_bar
    from convvae.tracking.modelref import load_detector_ref

    refuse_to_replace([args.out] if args.out else [], args)
    if args.maps is not None:
        names = image_names(args.images)
        check_map_names(names)
        stems = [Path(args.maps) / f"{map_stem(name)}_map" for name in names]
        refuse_to_replace([f"{stem}{ext}" for stem in stems for ext in (".png", ".npy")], args)
    detector = load_detector_ref(args.model, registry_tracking(args))
    model = detector.scorer.model
    total, batches = iter_images(args.images, image_shape(model), resize_option(model, args.resize))
    # The first batch is read before any output: a wrong size or mode is one error line alone.
    batches = itertools.chain([next(batches)], batches)
    # Rows go to a temporary file renamed at the end: a bad file halfway leaves no half a CSV.
    with contextlib.ExitStack() as stack:
        if args.out is None:
            table = sys.stdout
        else:
            table = stack.enter_context(stack.enter_context(atomic_path(args.out)).open("w"))
        bar = stack.enter_context(live_bar(total))
        flagged = write_scores(detector, batches, table, args.maps, bar.update)
    if args.out is None:
        return
    record = detector.record
    normal = "every class" if record.normal_class is None else f"class {record.normal_class}"
    maps = f"; maps → {args.maps}/" if args.maps is not None else ""
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        f"{total} images scored ({record.spec.name}, threshold {record.threshold:.2f}, "
        f"normal: {normal}): {flagged} anomalous → {args.out}{maps}; peak memory "
        f"{peak_mib:.0f} MiB"
    )


def _export(args: argparse.Namespace) -> None:
    import time
    from pathlib import Path

    from convvae.anomaly.export import export_onnx
    from convvae.runtime.files import write_json
    from convvae.tracking.modelref import load_detector_ref

    out = Path(args.out)
    refuse_to_replace([out, out.with_suffix(".threshold.json")], args)
    detector = load_detector_ref(args.model, registry_tracking(args))
    started = time.perf_counter()
    export_onnx(detector.scorer, out)
    record_file = out.with_suffix(".threshold.json")
    write_json(detector.record.as_json(), record_file)
    shape = ", ".join(map(str, detector.scorer.model.arch.image_shape))
    print(
        f"{out}: ONNX graph pixels (N, {shape}) in [0, 1] → score "
        f"({detector.record.spec.name}), anomaly_map; threshold record {record_file} "
        f"({time.perf_counter() - started:.1f} s)"
    )


def add_promote(commands, common, registry) -> None:
    promote = commands.add_parser(
        "promote",
        help="move @champion to the newest version if it is better by more than noise",
        parents=[common],
    )
    promote.add_argument("--model", required=True, help="registered model, e.g. convvae-mnist-5k")
    promote.add_argument(
        "--metric", default="neg_elbo", help=" | ".join(typing.get_args(PromoteMetric))
    )
    promote.add_argument("--dry-run", action="store_true", help="compare only; change nothing")
    promote.add_argument("--params", default="params.yaml", help="tracking and anomaly sections")
    promote.add_argument(
        "--data",
        default="data/prepared/splits.npz",
        help="prepared splits: versions are compared on the halves of its validation images",
    )
    promote.set_defaults(action=_promote)


def add_score(commands, common, registry) -> None:
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
        help="CSV file (file, score, normalized_score, is_anomaly, p_value = conformal p-value; "
        "normalized_score repeats p_value for one release); default: stdout",
    )
    scorer.add_argument("--resize", action="store_true", help=RESIZE_HELP)
    scorer.add_argument(
        "--maps",
        help="folder for each image's anomaly map: <name>_map.png (overlay) and <name>_map.npy",
    )
    scorer.set_defaults(action=_score)


def add_export(commands, common, registry) -> None:
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
