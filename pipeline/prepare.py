"""DVC stage `prepare`: load the data source, split it, write the splits and a manifest."""

from convvae.config import load_params
from convvae.data.splits import build_manifest, load_configured, save_splits
from convvae.errors import run_stage
from convvae.runtime.files import write_json
from pipeline import layout


def main() -> None:
    cfg = load_params(layout.PARAMS).data
    source, splits = load_configured(cfg)
    save_splits(splits, layout.PREPARED_SPLITS)
    write_json(build_manifest(source, splits), layout.MANIFEST)
    shape = "x".join(map(str, splits.train.images.shape[1:]))
    print(
        f"prepared {cfg.source}: {len(splits.train)} train, {len(splits.val)} val, "
        f"{len(splits.test)} test images of {shape}"
    )


if __name__ == "__main__":
    run_stage(main)
