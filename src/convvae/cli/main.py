"""The `convvae` command: one subcommand per use, each a thin call into the library.

User-fixable errors print as one line (convvae.errors.exit_on_error); --debug shows tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from convvae.cli import anomaly, serve, uses
from convvae.cli.common import DEFAULT_PARAMS
from convvae.errors import debug_requested, exit_on_error
from convvae.runtime.allocator import keep_freed_memory


def _check_params(args: argparse.Namespace) -> None:
    from convvae.config import load_params

    params = load_params(args.params)
    print(json.dumps(params.to_dict(), indent=2))


def _inspect(args: argparse.Namespace) -> None:
    from convvae.model.files import load_model
    from convvae.model.vae import count_parameters

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


def add_check_params(commands, common, registry) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `convvae` (subcommands call into the library)."""
    parser = argparse.ArgumentParser(prog="convvae", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    # Also accepted after the subcommand; SUPPRESS keeps it from resetting the flag given before.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    common.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (default: refuse)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument(
        "--params",
        help="for a models:/ reference, the store its tracking section names, as the stages "
        f"and `promote` use (default: {DEFAULT_PARAMS} where it exists)",
    )
    for add in (
        add_check_params,
        anomaly.add_promote,
        uses.add_generation,
        uses.add_compression,
        uses.add_impute,
        anomaly.add_score,
        anomaly.add_export,
        serve.add_serve,
    ):
        add(commands, common, registry)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `convvae` console script."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # scoring's large temporary tensors (convvae.runtime.allocator)
    exit_on_error(lambda: args.action(args), args.debug or debug_requested())
