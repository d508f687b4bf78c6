"""Real industrial defects: electroluminescence images of solar cells (ELPV), a folder per type.

The ELPV data set (Buerhop-Lutz et al. 2018; Deitsch et al. 2019; CC BY-NC-SA 4.0) ships inside
the PyPI package ``elpv-dataset``: 2,624 grey 300x300 cells cut from photovoltaic modules, each
rated by an expert as defective with probability 0, 1/3, 2/3 or 1 (cracks, broken fingers,
inactive regions: real defects, not generated ones), and typed mono- or polycrystalline.

Each type becomes one category in the MVTec AD layout with image-level labels only (no masks):
train/good and test/good from the cells rated 0, test/defective from the cells rated 1 (the
uncertain 1/3 and 2/3 cells are left out). The split of the material:

- ``mono`` (588 good, 313 defective) is a **selection** folder: a default may be chosen on it.
- ``poly`` (920 good, 402 defective) is **held out**: no choice of any default has seen it, and
  none may. Its results are evaluation results.

The pipeline runs as a user runs it (a copy of the repository, ``data.source: folder``,
``data.image_size`` set, every other default) and the table collects metrics/defects.json.

    .venv/bin/pip install --require-hashes -r docs/benchmark/requirements.txt   # 91 MB
    .venv/bin/python docs/benchmark/elpv.py [--size 64] [--types mono poly]

Writes docs/benchmark/elpv/<size>px.md and <size>px.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "docs/benchmark")]
from folder_runs import IMAGE_PEERS, evaluate_folder, margin_cell  # noqa: E402

from tests.e2e.project import make_project  # noqa: E402

OUT = REPO / "docs/benchmark/elpv"
ROLE = {"mono": "selection", "poly": "held out"}
N_TRAIN = 400  # good cells to train on; the rest of the good cells are test/good
N_DEFECTIVE = 200  # defective cells in test/defective (a fixed random subset)
COLUMNS = [
    ("ours (default)", "image_roc_auc"),
    ("ours: patch_knn_guarded (the default before)", "patch_knn_guarded.image_roc_auc"),
    ("ours: fused", "fused.image_roc_auc"),
    ("unit-pixel distance (cosine_knn, no VAE)", "cosine_knn.image_roc_auc"),
    *IMAGE_PEERS,
]


def elpv_cells() -> list[tuple[Path, float, str]]:
    """(image file, defect probability, cell type) for every cell, from the installed package."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "elpv-dataset is not installed: "
            ".venv/bin/pip install --require-hashes -r docs/benchmark/requirements.txt"
        )
    data = Path(spec.origin).parent / "data"
    with open(data / "labels.csv") as labels:
        rows = [line.split() for line in labels if line.strip()]
    return [(data / path, float(probability), kind) for path, probability, kind in rows]


def build_folder(root: Path, kind: str, seed: int = 0) -> dict[str, int]:
    """One cell type as an MVTec AD category (PNG copies of the original cells); counts per part."""
    cells = [(path, p) for path, p, k in elpv_cells() if k == kind]
    good = [path for path, p in cells if p == 0.0]
    defective = [path for path, p in cells if p == 1.0]
    rng = np.random.default_rng(seed)
    good = [good[i] for i in rng.permutation(len(good))]
    defective = [defective[i] for i in rng.permutation(len(defective))][:N_DEFECTIVE]
    parts = {"train/good": good[:N_TRAIN], "test/good": good[N_TRAIN:],
             "test/defective": defective}  # fmt: skip
    for part, files in parts.items():
        (root / part).mkdir(parents=True)
        for path in files:
            Image.open(path).convert("L").save(root / part / path.name)
    return {part: len(files) for part, files in parts.items()}


def run_type(kind: str, size: int, scratch: Path) -> dict:
    project = make_project(scratch / f"project-{kind}")
    counts = build_folder(scratch / kind, kind)
    found = evaluate_folder(project, scratch / kind, samples=8, image_size=size)
    return {"type": kind, "role": ROLE[kind], "size": size, **counts, **found}


def render(rows: list[dict]) -> str:
    head = "| cells (role) | " + " | ".join(t for t, _ in COLUMNS)
    head += " | margin over the best VAE-free | train / test good / defective | epochs | seconds |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 5)]
    for row in rows:
        cells = [f"{100 * row[key]:.1f}" if key in row else "–" for _, key in COLUMNS]
        counts = f"{row['train/good']} / {row['test/good']} / {row['test/defective']}"
        tail = f" | {margin_cell(row)} | {counts} | {row['epochs']} | {row['seconds']:.0f} |"
        lines.append(f"| {row['type']} ({row['role']}) | " + " | ".join(cells) + tail)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--types", nargs="+", default=["mono", "poly"], choices=sorted(ROLE))
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the table from the JSON"
    )
    args = parser.parse_args()
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    stem = OUT / f"{args.size}px"
    if args.render:
        rows = json.loads(stem.with_suffix(".json").read_text())
    else:
        with tempfile.TemporaryDirectory() as scratch:
            rows = [run_type(kind, args.size, Path(scratch)) for kind in args.types]
        OUT.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    table = render(rows)
    stem.with_suffix(".md").write_text(
        f"# ELPV solar cells at {args.size}x{args.size} px, image-level labels\n\n"
        f"Made by `docs/benchmark/elpv.py --size {args.size}` (2 CPU cores): "
        f"`dvc repro evaluate` with every default of a folder source ({rows[0]['default_score']}). "
        "Image ROC-AUC (chance 50.0). Margin: the default minus the best method without a trained "
        "VAE, with its paired bootstrap interval. mono is a selection folder, poly is held out.\n\n"
        + table
        + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()
