"""Fast re-ID evaluation (CMC and mAP) that agrees with torchreid's reference evaluator.

torchreid-pip 0.2.5 ships without its Cython evaluator, and its python fallback
(``torchreid.reid.metrics.rank.evaluate_rank``) loops over queries in Python: ~1 minute at Market-1501
size. This module computes exactly the same numbers, vectorised over chunks of queries:

Protocol (Market-1501, single query): for each query, gallery images with the same pid AND the same
camera are removed; every other image of the query's pid is a correct match; everything else (other
identities, distractors ``pid 0``) is a negative; queries with no correct match are skipped. The ranking
is the full gallery ranking (no top-k truncation, which would change mAP). Junk images (``pid -1``)
must not be in the gallery (torchreid and :class:`~posereid.reid_integration.market1501.Market1501`
callers drop them at load time); they would count as ordinary negatives here, as in torchreid.

How it avoids sorting the whole gallery row: AP and CMC only depend on where the correct matches land.
For each query the ``k`` match distances are sorted (``topk``), every negative is bucketed between them
with ``searchsorted`` and a cumulative count gives the number of negatives ranked before each match.
That is exact whenever no negative has exactly the same distance as a match. Rows that do have such a
tie are re-ranked with ``np.argsort`` on the very same row (the call torchreid makes), so even tie order
agrees with torchreid bit for bit.

:class:`IdentityCentroids` scores features against per-identity centroids instead (the identity filter of
generated images and the generator quality report both use it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from posereid.models.runtime import resolve_device

logger = logging.getLogger(__name__)

Metric = Literal["euclidean", "cosine"]
ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

__all__ = ["IdentityCentroids", "compute_distance_matrix", "evaluate_features", "evaluate_rank"]


def _as_features(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (num_images, dim) feature matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float()
    return t


def _distance_block(
    q: torch.Tensor, g: torch.Tensor, g_sq: torch.Tensor | None, metric: Metric
) -> torch.Tensor:
    """Distances of a block of queries to the whole gallery (features already prepared for ``metric``)."""
    if metric == "euclidean":
        # torchreid's "euclidean" is the SQUARED distance |q|^2 + |g|^2 - 2 q.g (same ranking, same numbers)
        q_sq = q.pow(2).sum(dim=1, keepdim=True)
        return torch.addmm(q_sq + g_sq, q, g.t(), beta=1, alpha=-2)
    return 1.0 - q @ g.t()  # cosine distance of L2-normalised features


def _prepare(
    qf: ArrayLike, gf: ArrayLike, metric: Metric, device: torch.device, dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    q = _as_features(qf, "qf")
    g = _as_features(gf, "gf")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"qf has dimension {q.shape[1]} but gf has {g.shape[1]}")
    dtype = dtype or (q.dtype if q.dtype == torch.float64 else torch.float32)
    q = q.to(device=device, dtype=dtype)
    g = g.to(device=device, dtype=dtype)
    if metric == "cosine":
        return F.normalize(q, p=2, dim=1), F.normalize(g, p=2, dim=1), None
    return q, g, g.pow(2).sum(dim=1).unsqueeze(0)


def compute_distance_matrix(
    qf: ArrayLike,
    gf: ArrayLike,
    metric: Metric = "euclidean",
    *,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    backend: Literal["torch", "faiss"] = "torch",
) -> torch.Tensor:
    """Query × gallery distance matrix, computed ``chunk_size`` query rows at a time.

    ``"euclidean"`` is the squared Euclidean distance and ``"cosine"`` is ``1 - cos``, the same numbers as
    ``torchreid.reid.metrics.compute_distance_matrix``. Runs on ``device`` (default: CUDA when available)
    and returns a CPU tensor (float32 unless float64 features or ``dtype`` are given).
    ``backend="faiss"`` uses ``faiss.pairwise_distances`` (CPU, float32).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if backend == "faiss":
        return _faiss_distance_matrix(qf, gf, metric)
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'faiss', got {backend!r}")
    dev = resolve_device(device)
    q, g, g_sq = _prepare(qf, gf, metric, dev, dtype)
    out = torch.empty((q.shape[0], g.shape[0]), dtype=q.dtype)
    with torch.no_grad():
        for r0 in range(0, q.shape[0], chunk_size):
            out[r0 : r0 + chunk_size] = _distance_block(q[r0 : r0 + chunk_size], g, g_sq, metric).cpu()
    return out


def _faiss_distance_matrix(qf: ArrayLike, gf: ArrayLike, metric: Metric) -> torch.Tensor:
    import faiss

    q, g, _ = _prepare(qf, gf, metric, torch.device("cpu"), torch.float32)
    qn = np.ascontiguousarray(q.numpy())
    gn = np.ascontiguousarray(g.numpy())
    if metric == "euclidean":
        d = faiss.pairwise_distances(qn, gn, faiss.METRIC_L2)
    else:
        d = 1.0 - faiss.pairwise_distances(qn, gn, faiss.METRIC_INNER_PRODUCT)
    return torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------------------------------
def _as_labels(x: ArrayLike, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries, expected {n}")
    return arr.astype(np.int64)


def _rows_exact(
    rows: np.ndarray,
    q_pids: np.ndarray,
    q_cams: np.ndarray,
    g_pids: np.ndarray,
    g_cams: np.ndarray,
    removed: np.ndarray | None = None,
) -> tuple[list[int], list[float]]:
    """torchreid's per-query procedure (full argsort) for a few rows: (first-hit rank, AP) per row.

    ``removed``: optional ``(rows, num_gallery)`` bool mask of extra gallery images dropped per row."""
    first, aps = [], []
    for i, (row, qp, qc) in enumerate(zip(rows, q_pids, q_cams)):
        order = np.argsort(row)  # same call (same kind, same data) as torchreid → same tie order
        gp, gc = g_pids[order], g_cams[order]
        keep = ~((gp == qp) & (gc == qc))
        if removed is not None:
            keep &= ~removed[i][order]
        hits = np.flatnonzero(gp[keep] == qp)
        first.append(int(hits[0]))
        aps.append(float(np.mean(np.arange(1, hits.size + 1) / (hits + 1.0))))
    return first, aps


def evaluate_rank(
    distmat: ArrayLike | None,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    *,
    max_rank: int = 50,
    qf: ArrayLike | None = None,
    gf: ArrayLike | None = None,
    metric: Metric = "euclidean",
    chunk_size: int = 256,
    device: str | torch.device | None = None,
    return_num_valid: bool = False,
    exclude: ArrayLike | None = None,
) -> tuple[np.ndarray, float] | tuple[np.ndarray, float, int]:
    """CMC curve and mAP, equal to torchreid's ``evaluate_rank(..., use_metric_cuhk03=False)``.

    Args:
        distmat: ``(num_query, num_gallery)`` distances (numpy or torch), or ``None`` to compute them
            chunk by chunk from ``qf``/``gf`` with ``metric`` (the full matrix is never materialised).
        q_pids, g_pids, q_camids, g_camids: 1-D identity and camera labels.
        max_rank: CMC length (cut to the gallery size, as torchreid does).
        chunk_size: queries processed at once; peak extra memory is about ``chunk_size × num_gallery ×
            40`` bytes (256 × Market's 15,913 ≈ 160 MB).
        device: where the chunks are ranked (default CUDA when available). With ``distmat`` given, it is
            only moved there one chunk at a time.
        return_num_valid: also return the number of queries that had a correct match.
        exclude: optional ``(num_query, k)`` gallery indices (``-1`` = none) dropped from that query's
            ranking on top of the Market rule, neither match nor non-match. For scoring images made
            from gallery images (a generated image must not be matched to its own source or target).

    Returns:
        ``(cmc, mAP)``: ``cmc`` float32 of length ``max_rank`` (``cmc[k]`` = fraction of valid queries with
        a correct match within the top ``k + 1``), ``mAP`` a float. Where the gallery left after the
        same-camera removal is shorter than ``max_rank``, the CMC is padded with its final value 1
        (torchreid would fail on the ragged array).

    Raises:
        ValueError: shapes disagree, NaN distances, or no query has a correct match (±inf is ranked
            like torchreid: first/last).
    """
    dev = resolve_device(device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    fused = distmat is None
    if fused:
        if qf is None or gf is None:
            raise ValueError("give either distmat or both qf and gf")
        q, g, g_sq = _prepare(qf, gf, metric, dev, None)
        num_q, num_g = q.shape[0], g.shape[0]
    else:
        dm = distmat if isinstance(distmat, torch.Tensor) else torch.from_numpy(np.asarray(distmat))
        if dm.ndim != 2:
            raise ValueError(f"distmat must be 2-D, got shape {tuple(dm.shape)}")
        num_q, num_g = dm.shape
    qp = _as_labels(q_pids, "q_pids", num_q)
    gp = _as_labels(g_pids, "g_pids", num_g)
    qc = _as_labels(q_camids, "q_camids", num_q)
    gc = _as_labels(g_camids, "g_camids", num_g)
    max_rank = min(int(max_rank), num_g)
    if max_rank < 1:
        raise ValueError("max_rank and the gallery size must be >= 1")
    ex = None
    if exclude is not None:
        ex = np.asarray(exclude, dtype=np.int64).reshape(num_q, -1)
        if ex.size and (ex.max() >= num_g or ex.min() < -1):
            raise ValueError(f"exclude holds gallery indices outside [-1, {num_g - 1}]")

    gp_t = torch.from_numpy(gp).to(dev)
    gc_t = torch.from_numpy(gc).to(dev)
    first_hit = np.full(num_q, -1, dtype=np.int64)  # 0-based rank of the first match, -1 = no match
    ap = np.zeros(num_q, dtype=np.float64)
    with torch.no_grad():
        for r0 in range(0, num_q, chunk_size):
            r1 = min(r0 + chunk_size, num_q)
            if fused:
                d = _distance_block(q[r0:r1], g, g_sq, metric)
            else:
                d = dm[r0:r1].to(dev)
            if torch.isnan(d.sum()) and torch.isnan(d).any():  # cheap test first (inf - inf is NaN too)
                raise ValueError(f"distances of queries {r0}..{r1 - 1} contain NaN")
            qp_t = torch.from_numpy(qp[r0:r1]).to(dev)[:, None]
            qc_t = torch.from_numpy(qc[r0:r1]).to(dev)[:, None]
            same_pid = gp_t[None, :] == qp_t
            pos = same_pid & (gc_t[None, :] != qc_t)  # correct matches (kept)
            neg = ~same_pid
            removed = None
            if ex is not None:
                e = torch.from_numpy(ex[r0:r1]).to(dev)
                rows_i = torch.arange(r1 - r0, device=dev)[:, None].expand_as(e)
                removed = torch.zeros_like(same_pid)
                removed[rows_i[e >= 0], e[e >= 0]] = True
                pos &= ~removed
                neg &= ~removed
            n_pos = pos.sum(dim=1)
            k = int(n_pos.max())
            if k == 0:
                continue
            # sorted match distances, padded with +inf past each row's n_pos
            pos_d = torch.topk(torch.where(pos, d, torch.inf), k, dim=1, largest=False, sorted=True).values
            # bucket of each gallery image = #{match distances <= d}; a non-match lands before match j
            # exactly when its bucket is <= j (strictly smaller distance)
            bucket = torch.searchsorted(pos_d, d.contiguous(), right=True)
            b = r1 - r0
            before_lt = torch.zeros((b, k + 1), dtype=torch.int32, device=dev)
            before_lt.scatter_add_(1, bucket, neg.to(torch.int32))
            # a non-match tied with a match: the largest match distance <= d equals d
            below = torch.gather(pos_d, 1, (bucket - 1).clamp(min=0))
            tie_rows = (neg & (bucket > 0) & (below == d)).any(1) & (n_pos > 0)
            before_lt = before_lt.cumsum(1)[:, :k]
            j = torch.arange(k, device=dev)[None, :]
            valid_j = j < n_pos[:, None]
            rank = (j + before_lt).to(torch.float64)  # 0-based rank among kept gallery images
            ap_rows = torch.where(valid_j, (j + 1).to(torch.float64) / (rank + 1.0), 0.0).sum(1)
            ap_rows = ap_rows / n_pos.clamp(min=1).to(torch.float64)

            sel = slice(r0, r1)
            valid = (n_pos > 0).cpu().numpy()
            first_hit[sel] = np.where(valid, before_lt[:, 0].cpu().numpy(), -1)
            ap[sel] = ap_rows.cpu().numpy()
            ties = np.flatnonzero(tie_rows.cpu().numpy())
            if ties.size:
                rows = d[torch.from_numpy(ties).to(dev)].cpu().numpy()
                rm = removed[torch.from_numpy(ties).to(dev)].cpu().numpy() if removed is not None else None
                fh, aps = _rows_exact(rows, qp[r0 + ties], qc[r0 + ties], gp, gc, rm)
                first_hit[r0 + ties] = fh
                ap[r0 + ties] = aps
                logger.debug(
                    "%d queries had match/non-match distance ties; ranked with np.argsort", ties.size
                )

    valid = first_hit >= 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a correct match in the gallery (all query identities are missing)")
    hist = np.bincount(first_hit[valid], minlength=num_g)[:max_rank]
    cmc = (np.cumsum(hist) / num_valid).astype(np.float32)
    mAP = float(np.mean(ap[valid]))
    if return_num_valid:
        return cmc, mAP, num_valid
    return cmc, mAP


def evaluate_features(
    qf: ArrayLike,
    gf: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    metric: Metric = "euclidean",
    *,
    chunk_size: int = 256,
    device: str | torch.device | None = None,
    exclude: ArrayLike | None = None,
) -> dict[str, float | int]:
    """Features → ``{"rank1", "rank5", "rank10", "mAP", "num_valid_queries"}`` (fractions in [0, 1]).

    Ranks beyond the gallery size report the last CMC value. ``exclude``: see :func:`evaluate_rank`.
    """
    cmc, mAP, num_valid = evaluate_rank(
        None,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        qf=qf,
        gf=gf,
        metric=metric,
        max_rank=10,
        chunk_size=chunk_size,
        device=device,
        return_num_valid=True,
        exclude=exclude,
    )
    at = lambda r: float(cmc[min(r, len(cmc)) - 1])  # noqa: E731
    return {"rank1": at(1), "rank5": at(5), "rank10": at(10), "mAP": mAP, "num_valid_queries": num_valid}


class IdentityCentroids:
    """Per-identity centroids of reference re-ID features, and cosine similarities of queries to them.

    Any device in, CPU out. A centroid is the normalised mean of the L2-normalised reference features of one pid; pids ≤ 0 (junk
    and distractors) make none. Computed in float64.

    Attributes:
        pids: ``(P,)`` sorted identities that have a centroid.
        centroids: ``(P, D)`` L2-normalised centroids.
    """

    def __init__(self, features: ArrayLike, pids: ArrayLike) -> None:
        ref = F.normalize(_as_features(features, "reference features").detach().cpu().double(), dim=1)
        rp = _as_labels(pids, "reference pids", ref.shape[0])
        keep = rp > 0
        self.pids = np.unique(rp[keep])
        if len(self.pids) == 0:
            raise ValueError("identity centroids need reference features with pids > 0")
        rows = torch.from_numpy(np.searchsorted(self.pids, rp[keep]))
        self._reference, self._reference_pids, self._keep = ref, rp, keep
        self._sums = torch.zeros(len(self.pids), ref.shape[1], dtype=torch.float64)
        self._sums.index_add_(0, rows, ref[torch.from_numpy(keep)])
        self._counts = torch.bincount(rows, minlength=len(self.pids))
        self.centroids = F.normalize(self._sums, dim=1)

    def similarities(
        self, query: ArrayLike, query_pids: ArrayLike, *, exclude: ArrayLike | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(own, other)``: cosine of each query to its own identity's centroid and to the nearest OTHER one.

        ``own`` is NaN where the query's pid has no centroid (or nothing is left of it after ``exclude``),
        ``other`` where there is no other identity. ``exclude[i]`` (reference rows, -1 for none; shape
        ``(N,)`` or ``(N, k)``) are left out of query ``i``'s own centroid, so a real image scored "as if
        generated" is not compared with itself.
        """
        q = F.normalize(_as_features(query, "query features").detach().cpu().double(), dim=1)
        qp = _as_labels(query_pids, "query pids", q.shape[0])
        if q.shape[1] != self.centroids.shape[1]:
            raise ValueError(
                f"query features have dimension {q.shape[1]}, the centroids {self.centroids.shape[1]}"
            )
        sims = q @ self.centroids.T  # (Q, P)
        pos = np.searchsorted(self.pids, qp).clip(max=len(self.pids) - 1)
        known = self.pids[pos] == qp
        own = np.full(len(qp), np.nan)
        rows = np.flatnonzero(known)
        own[rows] = sims[torch.from_numpy(rows), torch.from_numpy(pos[rows])].numpy()
        own[known & (self._sums.norm(dim=1).numpy()[pos] == 0)] = np.nan
        if exclude is not None:
            excl = np.asarray(exclude, dtype=np.int64).reshape(len(qp), -1)
            for i in rows:
                drop = [
                    r
                    for r in set(excl[i].tolist())
                    if r >= 0 and self._keep[r] and self._reference_pids[r] == qp[i]
                ]
                if drop:
                    k = pos[i]
                    own_sum = self._sums[k] - self._reference[drop].sum(0)
                    ok = self._counts[k] > len(drop) and own_sum.norm() > 0
                    own[i] = float(q[i] @ F.normalize(own_sum, dim=0)) if ok else np.nan
        masked = sims.clone()
        masked[torch.from_numpy(rows), torch.from_numpy(pos[rows])] = -torch.inf
        other = masked.max(dim=1).values.numpy()
        other = np.where(np.isneginf(other), np.nan, other)  # the query's own identity was the only one
        return own, other
