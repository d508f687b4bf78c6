"""`convvae serve`: a registered version behind MLflow's scoring app, with request limits.

MLflow's own `mlflow models serve` parses a request body of any size into Python objects before
the model can refuse it, and answers errors with stack traces. This command serves the same app
(same routes, same answers) with ``convvae.serving.RequestLimits`` in front, and only a complete
version (``Registry.complete_version``), run by the installed convvae.
"""

from __future__ import annotations

import argparse

from convvae.cli.common import registry_tracking


def _serve(args: argparse.Namespace) -> None:
    import mlflow
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from convvae.serving import RequestLimits, max_body_bytes, max_images
    from convvae.tracking.modelref import served_model_folder

    model = mlflow.pyfunc.load_model(str(served_model_folder(args.model, registry_tracking(args))))
    # The images it takes, from its signature: (-1, C, H, W).
    shape = tuple(model.metadata.get_input_schema().inputs[0].shape[1:])
    limit = max_body_bytes(shape)
    app = RequestLimits(scoring_server.init(model), limit)
    print(
        f"serving {args.model} at http://{args.host}:{args.port}/invocations: at most "
        f"{max_images(shape)} images of {'x'.join(map(str, shape))} ({limit} bytes) per request",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def add_serve(commands, common, registry) -> None:
    server = commands.add_parser(
        "serve",
        help="serve a registered version over HTTP (MLflow's /invocations, with request limits)",
        parents=[common, registry],
    )
    server.add_argument(
        "--model",
        required=True,
        help="models:/NAME@alias, models:/NAME/VERSION, or a downloaded MLflow model folder",
    )
    server.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    server.add_argument("--port", type=int, default=5001)
    server.set_defaults(action=_serve)
