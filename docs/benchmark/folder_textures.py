"""The folder source end to end on real textures: `dvc repro evaluate` per texture, one table.

Each texture is a scikit-image photograph (offline) cut into 64x64 tiles laid out as one MVTec AD
category by tests/mvtec.py: 200 train/good tiles, 50 test/good, 25 scratches and 25 pasted
patches of another photograph, with masks. The pipeline runs as a user runs it (a copy of the
repository, `data.source: folder`, every default), and the table collects metrics/defects.json:
ours, the peers and the ablations (no trained VAE: the raw-pixel patch search, the default by the
untrained network), and the default's margin over the best method without a trained VAE.

These textures and defect generators chose the folder defaults (docs/benchmark/folder-selection):
selection results, not held-out ones.

    .venv/bin/python docs/benchmark/folder_textures.py   # about 10 minutes on 2 CPU cores

Writes docs/benchmark/folder-textures/README.md, results.json and <texture>_maps.png.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "docs/benchmark")]
from folder_runs import IMAGE_PEERS, evaluate_folder, margin_cell  # noqa: E402

from tests.e2e.project import make_project  # noqa: E402
from tests.mvtec import build_mvtec_folder  # noqa: E402

OUT = REPO / "docs/benchmark/folder-textures"
TEXTURES = [("brick", False), ("grass", False), ("gravel", False), ("immunohistochemistry", True)]
COLUMNS = [
    ("image ROC-AUC, ours (default)", "image_roc_auc"),
    ("ours: patch_knn_guarded (the default before)", "patch_knn_guarded.image_roc_auc"),
    ("ours: fused", "fused.image_roc_auc"),
    *IMAGE_PEERS,
    ("margin over the best VAE-free", "margin_over_vae_free.image_roc_auc"),
    ("pixel ROC-AUC, ours", "pixel_roc_auc"),
    ("ours: deviance map", "deviance_map.pixel_roc_auc"),
    ("per-pixel Gaussian", "gaussian_zscore.pixel_roc_auc"),
    ("raw-pixel patch kNN", "pixel_patch_knn.pixel_roc_auc"),
    ("untrained network", "untrained_encoder.pixel_roc_auc"),
    ("AUPRO, ours", "pixel_aupro"),
    ("ours: deviance map", "deviance_map.pixel_aupro"),
    ("per-pixel Gaussian", "gaussian_zscore.pixel_aupro"),
]


def run_texture(name: str, rgb: bool, scratch: Path) -> dict:
    project = make_project(scratch / f"project-{name}")
    folder = build_mvtec_folder(scratch / name, rgb=rgb, size=64, n_train=200, n_test_good=50,
                                n_per_defect=25, texture=name)  # fmt: skip
    found = evaluate_folder(project, folder, samples=32)
    OUT.mkdir(parents=True, exist_ok=True)  # the defect images, their maps and masks
    shutil.copy(project / "plots/evaluate/anomaly_maps.png", OUT / f"{name}_maps.png")
    return {"texture": name, "rgb": rgb, **found}


def render(rows: list[dict]) -> str:
    margin = [key for _, key in COLUMNS].index("margin_over_vae_free.image_roc_auc")
    head = "| texture | " + " | ".join(title for title, _ in COLUMNS) + " | epochs | seconds |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for row in rows:
        cells = [f"{100 * row[key]:+.1f}" if key.startswith("margin") else
                 f"{100 * row[key]:.1f}" for _, key in COLUMNS]  # fmt: skip
        cells[margin] = margin_cell(row)
        kind = "RGB" if row["rgb"] else "grey"
        lines.append(f"| {row['texture']} ({kind}) | " + " | ".join(cells)
                     + f" | {row['epochs']} | {row['seconds']:.0f} |")  # fmt: skip
    means = [f"{100 * sum(r[key] for r in rows) / len(rows):.1f}" for _, key in COLUMNS]
    # a margin's mean over textures has no interval here (its best method differs per texture)
    means[margin] = f"{float(means[margin]):+.1f}"
    lines.append("| **mean** | " + " | ".join(means) + " | | |")
    return "\n".join(lines)


def main() -> None:
    import tempfile

    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    with tempfile.TemporaryDirectory() as scratch:
        rows = [run_texture(name, rgb, Path(scratch)) for name, rgb in TEXTURES]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    table = render(rows)
    (OUT / "README.md").write_text(
        "# The folder source on real textures (64x64 tiles, synthetic defects)\n\n"
        f"Made by `docs/benchmark/folder_textures.py` on {time.strftime('%Y-%m-%d')}: "
        f"`dvc repro evaluate` with every default of a folder source ({rows[0]['default_score']}). "
        "These textures and defect generators chose the folder defaults: selection results, not "
        "held-out ones. Margin: the default's image ROC-AUC minus the best method without a "
        "trained VAE on that texture, with its paired bootstrap interval.\n\n" + table + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()
