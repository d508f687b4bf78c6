"""The `convvae` command, and the one place where user-fixable errors become one-line messages."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable

from convvae.errors import ConvVAEError

DEBUG_ENV = "CONVVAE_DEBUG"


def run_stage(main: Callable[[], None]) -> None:
    """Run a pipeline stage; a ConvVAEError prints as one line (traceback with CONVVAE_DEBUG=1)."""
    _exit_on_error(main, debug=os.environ.get(DEBUG_ENV, "") not in ("", "0"))


def _exit_on_error(action: Callable[[], None], debug: bool) -> None:
    try:
        action()
    except ConvVAEError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted; finished epochs are kept in the checkpoint", file=sys.stderr)
        raise SystemExit(130) from None


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

    from convvae.config import load_params
    from convvae.data import load_splits
    from convvae.promote import promote
    from convvae.tracking import Tracker

    params = load_params(args.params)
    images = torch.from_numpy(load_splits(args.data).test.images)
    tracker = Tracker(params.tracking)
    decision = promote(tracker, args.model, images, args.metric, args.dry_run)
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `convvae` (subcommands call into the library)."""
    parser = argparse.ArgumentParser(prog="convvae", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    # Also accepted after the subcommand; SUPPRESS keeps it from resetting the flag given before.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
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
    promote = commands.add_parser(
        "promote",
        help="move @champion to the newest version if it is better by more than noise",
        parents=[common],
    )
    promote.add_argument("--model", required=True, help="registered model, e.g. convvae-mnist-5k")
    promote.add_argument("--metric", default="test_neg_elbo", help="test_neg_elbo | test_iwae_nll")
    promote.add_argument("--dry-run", action="store_true", help="compare only; change nothing")
    promote.add_argument("--params", default="params.yaml", help="for the tracking section")
    promote.add_argument(
        "--data", default="data/prepared/splits.npz", help="held-out images (the test split)"
    )
    promote.set_defaults(action=_promote)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `convvae` console script."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    _exit_on_error(lambda: args.action(args), debug)


if __name__ == "__main__":
    main()
