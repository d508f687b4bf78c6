"""The one nearest-neighbour distance: every kNN score, the patch map and their ONNX export."""

from __future__ import annotations

import torch

KNN_NEIGHBOURS = 5
# Bank rows compared at once: a (queries x rows) float64 block stays in cache (measured three
# times faster than one distance matrix), and a row block is cast to float64 at most 16 MB.
_BANK_BLOCK_ROWS = 1024
_BLOCK_ELEMENTS = 1 << 21
# Queries per pass in eager mode (fewer for wide vectors: at most 16 MB of float64 each); an
# exported graph takes all of its batch's at once.
_QUERY_CHUNK = 512


def knn_distance(
    queries: torch.Tensor, bank: torch.Tensor, k: int = KNN_NEIGHBOURS
) -> torch.Tensor:
    """Euclidean distance of each query (M, D) to its ``k``-th nearest row of ``bank`` (N, D),
    float64 (M,).

    Squared distances are taken as |q|^2 - 2 q.b + |b|^2 (as ``torch.cdist`` takes them) in
    float64, so cancellation loses nothing that matters and a query's distance does not depend
    on the other queries of its batch; the bank is searched block by block.
    """
    k = min(k, len(bank))
    chunk = max(1, min(_QUERY_CHUNK, _BLOCK_ELEMENTS // max(queries.shape[1], 1)))
    if torch.compiler.is_exporting() or len(queries) <= chunk:
        return _kth_distance(queries, bank, k)
    return torch.cat([_kth_distance(part, bank, k) for part in queries.split(chunk)])


def _kth_distance(queries: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    q = queries.double()
    rows = max(1, min(_BANK_BLOCK_ROWS, _BLOCK_ELEMENTS // max(q.shape[1], 1)))
    best = None  # (M, <= k) the smallest squared distances so far, less |q|^2, ascending
    for start in range(0, len(bank), rows):
        block = bank[start : start + rows].double()
        partial = torch.addmm(block.pow(2).sum(1), q, block.T, alpha=-2)
        if k == 1:  # the nearest only: a minimum, cheaper than a sort
            nearest = partial.amin(1, keepdim=True)
            best = nearest if best is None else torch.minimum(best, nearest)
            continue
        merged = partial if best is None else torch.cat([best, partial], dim=1)
        best = merged.topk(min(k, merged.shape[1]), dim=1, largest=False).values
    return (q.pow(2).sum(1) + best[:, -1]).clamp_min(0).sqrt()
