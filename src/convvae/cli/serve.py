"""`convvae serve`: a registered version behind MLflow's scoring app, with request limits.

MLflow's own `mlflow models serve` parses a request body of any size into Python objects before
the model can refuse it, and answers errors with stack traces. This command serves the same app
(same routes, same answers) with ``convvae.serving.RequestLimits`` in front, and only a complete
version (``Registry.complete_version``), loaded by the installed convvae: no code the artifact
names or holds is imported.
"""

from __future__ import annotations

import argparse

from convvae.cli.common import registry_tracking

CONCURRENCY = 8


def _serve(args: argparse.Namespace) -> None:
    import uvicorn
    from mlflow.models import Model
    from mlflow.pyfunc import PyFuncModel, scoring_server

    from convvae.serving import RequestLimits, _load_pyfunc, max_body_bytes, max_images
    from convvae.tracking.modelref import served_model_folder

    folder = served_model_folder(args.model, registry_tracking(args))
    # Built here, not by mlflow.pyfunc.load_model: that would import whatever loader module and
    # code the artifact's MLmodel names. Only its metadata is read (YAML), and the weights
    # with weights_only, by the installed convvae.
    meta = Model.load(str(folder))
    pyfunc = meta.flavors.get("python_function", {})
    scoring = _load_pyfunc(str(folder / pyfunc.get("data", "data/model.pt")), pyfunc.get("config"))
    model = PyFuncModel(model_meta=meta, model_impl=scoring)
    # The images it takes, from the weights' architecture (not the artifact's signature,
    # which whoever writes the store could widen).
    shape = scoring.scorer.model.arch.image_shape
    limit = max_body_bytes(shape)
    app = RequestLimits(scoring_server.init(model), limit)
    print(
        f"serving {args.model} at http://{args.host}:{args.port}/invocations: at most "
        f"{max_images(shape)} images of {'x'.join(map(str, shape))} ({limit} bytes) per request",
        flush=True,
    )
    # Connections at once: beyond CONCURRENCY, 503 (each may hold its body and a scoring pass).
    # uvicorn counts the asking connection among them, hence the + 1.
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", limit_concurrency=CONCURRENCY + 1
    )


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
