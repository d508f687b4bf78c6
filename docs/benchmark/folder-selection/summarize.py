import json
import sys
from collections import defaultdict

import numpy as np

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/research/results.jsonl"
tag = sys.argv[2] if len(sys.argv) > 2 else None
recs = [json.loads(l) for l in open(path)]
recs = [r for r in recs if tag is None or r.get("tag") == tag]
errs = [r for r in recs if "error" in r]
for r in errs:
    print("ERROR", r["texture"], r["cand"], r["error"])
    print(r.get("tb", ""))
recs = [r for r in recs if "error" not in r]
metrics = [
    "img_fused",
    "img_excess_nll",
    "img_hidden_knn",
    "img_cosine_knn",
    "pix_auc",
    "pix_aupro",
    "pixr_auc",
    "pixf_auc",
    "pixf_aupro",
    "best_epoch",
    "epochs_run",
    "train_s",
]
cands = ["bernoulli", "gauss_pixel", "gauss_shared", "dlogistic"]
texs = list(dict.fromkeys((r["texture"], r["size"]) for r in recs))
g = defaultdict(list)
for r in recs:
    g[(r["texture"], r["size"], r["cand"])].append(r)
print(f"{'texture':24s} {'cand':13s} " + " ".join(f"{m[:13]:>13s}" for m in metrics) + "  n")
for t, s in texs:
    for c in cands:
        rs = g[(t, s, c)]
        if not rs:
            continue
        vals = [np.array([r.get(m, np.nan) for r in rs], float) for m in metrics]
        print(
            f"{t[:18] + '@' + str(s):24s} {c:13s} "
            + " ".join(
                f"{v.mean():6.3f}±{v.std():5.3f}"
                if m not in ("best_epoch", "epochs_run", "train_s")
                else f"{v.mean():13.1f}"
                for m, v in zip(metrics, vals)
            )
            + f"  {len(rs)}"
        )
print("\nmean over textures (and seeds):")
for c in cands:
    rs = [r for r in recs if r["cand"] == c]
    if not rs:
        continue
    print(
        f"{'MEAN':24s} {c:13s} "
        + " ".join(f"{np.nanmean([r.get(m, np.nan) for r in rs]):13.3f}" for m in metrics)
        + f"  {len(rs)}"
    )
# paired: rank of each candidate within each (texture, size, seed), per metric
print("\nmean rank (1 = best) within each texture x seed:")
for m in [
    "img_fused",
    "img_excess_nll",
    "img_hidden_knn",
    "pix_auc",
    "pix_aupro",
    "pixf_auc",
    "pixf_aupro",
]:
    ranks = defaultdict(list)
    groups = defaultdict(dict)
    for r in recs:
        groups[(r["texture"], r["size"], r["seed"])][r["cand"]] = r.get(m, np.nan)
    for k, d in groups.items():
        if len(d) < 4:
            continue
        order = sorted(d, key=lambda c: -d[c])
        for i, c in enumerate(order):
            ranks[c].append(i + 1)
    print(f"  {m:15s} " + "  ".join(f"{c}={np.mean(ranks[c]):.2f}" for c in cands if ranks[c]))
nf = [
    (r["texture"], r["cand"], k, v)
    for r in recs
    for k, v in r.items()
    if k.startswith("nonfinite") or k.endswith("_error") or k.endswith("_tb")
]
print("\nnon-finite / pixel errors:", nf or "none")
