"""DVC stage `source`: list the data source's files (sizes, modification times) in a small file
that `prepare` depends on, so that images changed in place under data.path re-run prepare.

It runs at every `dvc repro` (always_changed; it reads no image); when the list is unchanged,
DVC skips prepare and everything after it.
"""

from convvae.config import load_params
from convvae.data.sources import source_fingerprint
from convvae.errors import run_stage
from convvae.runtime.files import write_json
from pipeline import layout


def main() -> None:
    cfg = load_params(layout.PARAMS).data
    fingerprint = source_fingerprint(cfg)
    write_json(fingerprint, layout.SOURCE_FINGERPRINT)
    files = fingerprint.get("files")
    listed = f"{len(files)} files in {fingerprint['path']}" if files is not None else "packaged"
    print(f"source {cfg.source}: {listed}")


if __name__ == "__main__":
    run_stage(main)
