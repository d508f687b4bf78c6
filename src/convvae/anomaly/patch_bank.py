"""The reference patch features the patch map searches: chosen to cover them (PatchCore's
greedy coreset), once, when the reference is fitted, and stored in the model file.

A random subset keeps the common patches many times over and misses rare normal ones, whose
every occurrence at test time then looks anomalous; the greedy k-center coreset (PatchCore,
Roth et al. 2022; anomalib's ``KCenterGreedy``) adds, one row at a time, the feature farthest
from every row chosen so far, so each normal feature lies near a row of the bank. Its cost is
one pass over the candidates per row chosen, so it runs on a seeded random pool of
``POOL_PER_ROW`` candidates per bank row, not on every patch of a large folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

# Bank rows: the patch search then costs about 2 * 16384 * C' flops per patch whatever the
# folder's size (chosen on the selection folders: docs/benchmark/folder-selection/coreset).
BANK_ROWS = 16384
# Candidates per bank row: the coreset's pool, a seeded random subset of every patch.
POOL_PER_ROW = 8
# Pool rows per part of the coreset search: 4 MB of float32 features at 32 channels, which a
# core's share of the cache holds.
CHUNK_ROWS = 32768
# Files written before banks were stored searched a seeded random subset of this many rows.
LEGACY_RANDOM_ROWS = 65536


@torch.no_grad()
def greedy_coreset(rows: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of ``size`` rows of ``rows`` (N, D), chosen greedily so that the largest
    distance from any row to its nearest chosen row is small (k-center greedy, starting from
    row 0): all indices when N <= size. Squared distances in float32 as |r|^2 - 2 r.c + |c|^2;
    ties go to the lowest index."""
    if len(rows) <= size:
        return torch.arange(len(rows))
    rows = rows.float().contiguous()
    norms = rows.pow(2).sum(1)
    nearest = torch.full((len(rows),), float("inf"))
    chosen = torch.empty(size, dtype=torch.long)
    latest = 0
    for i in range(size):
        chosen[i] = latest
        distance = torch.addmv(norms, rows, rows[latest], alpha=-2).add_(norms[latest])
        torch.minimum(nearest, distance, out=nearest)
        latest = int(nearest.argmax())
    return chosen


@torch.no_grad()
def pooled_rows(
    features: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    total: int,
    keep_rows: int,
) -> torch.Tensor:
    """``keep_rows`` rows of the (rows, C') feature rows of every image (all of them when
    there are no more than that), a seeded random subset, gathered batch by batch so that the
    features of a large folder never sit in memory at once. ``features``: a batch of images →
    (B, C', H', W'); ``total``: the number of rows every batch gives together."""
    keep = torch.arange(total)
    if total > keep_rows:
        keep = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:keep_rows]
    pool, first = None, 0
    for x in batches:
        found = features(x)
        rows = found.permute(0, 2, 3, 1).reshape(-1, found.shape[1])
        if pool is None:
            pool = torch.empty(len(keep), rows.shape[1])
        here = (keep >= first) & (keep < first + len(rows))
        pool[here] = rows[keep[here] - first]
        first += len(rows)
    return pool


def coreset_bank(
    features: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    total: int,
    rows: int = BANK_ROWS,
    chunk_rows: int | None = CHUNK_ROWS,
) -> torch.Tensor:
    """The bank: a greedy coreset of ``rows`` rows from a random pool of ``POOL_PER_ROW``
    times as many (``pooled_rows``' arguments), float32 (rows, C'). With ``chunk_rows``, the
    pool is cut into parts of about that many rows and each part gives its share of the bank
    (a composable coreset: each part's search stays in cache, and the whole costs a part's
    share of the flops); None chooses over the whole pool at once."""
    pool = pooled_rows(features, batches, total, rows * POOL_PER_ROW)
    if len(pool) <= rows:
        return pool
    parts = pool.tensor_split(1 if chunk_rows is None else -(-len(pool) // chunk_rows))
    chosen, first = [], 0
    for part in parts:  # each part's share in proportion to its rows: the shares sum to rows
        last = first + len(part)
        share = rows * last // len(pool) - rows * first // len(pool)
        chosen.append(part[greedy_coreset(part, share)])
        first = last
    return torch.cat(chosen).contiguous()
