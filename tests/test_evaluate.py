"""posereid's fast evaluator must give torchreid's numbers (mAP and full CMC) on the same inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from posereid.reid_integration.evaluate import compute_distance_matrix, evaluate_features, evaluate_rank

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Cython evaluation is unavailable" (that is why we exist)
    from torchreid.reid.metrics.distance import compute_distance_matrix as tr_distance
    from torchreid.reid.metrics.rank import evaluate_rank as tr_evaluate_rank


def torchreid_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    return tr_evaluate_rank(
        np.asarray(distmat),
        q_pids,
        g_pids,
        q_cams,
        g_cams,
        max_rank=max_rank,
        use_metric_cuhk03=False,
        use_cython=False,
    )


def assert_same(ours, ref):
    cmc, mAP = ours
    ref_cmc, ref_mAP = ref
    assert cmc.shape == ref_cmc.shape
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    assert abs(mAP - ref_mAP) <= 1e-6


def market_like(rng, num_q=120, num_g=900, num_ids=60, distractors=80):
    """Labels shaped like Market's test split: ids seen by several of 6 cameras, distractors (pid 0) in
    the gallery, some query ids seen only by the query's own camera (-> no valid match, skipped)."""
    ids = np.arange(1, num_ids + 1)
    g_pids = np.concatenate([rng.choice(ids, num_g - distractors), np.zeros(distractors, dtype=np.int64)])
    g_cams = rng.integers(0, 6, num_g)
    q_pids = rng.choice(ids, num_q)
    q_cams = rng.integers(0, 6, num_q)
    # query 0: its id exists in the gallery only under the query's camera -> removed -> skipped
    g_pids[g_pids == q_pids[0]] = q_pids[1] if q_pids[1] != q_pids[0] else 0
    g_pids[:3], g_cams[:3] = q_pids[0], q_cams[0]
    # query 1's id is absent from the gallery altogether -> skipped
    q_pids[1] = num_ids + 1
    return q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_torchreid_on_random_continuous_distances(seed):
    rng = np.random.default_rng(seed)
    q_pids, g_pids, q_cams, g_cams = (
        rng.integers(1, 40, 200),
        rng.integers(0, 40, 1500),
        rng.integers(0, 6, 200),
        rng.integers(0, 6, 1500),
    )
    distmat = rng.random((200, 1500)).astype(np.float32)
    ours = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    assert_same(ours, torchreid_rank(distmat, q_pids, g_pids, q_cams, g_cams))


def test_equals_torchreid_on_market_shaped_features():
    rng = np.random.default_rng(3)
    q_pids, g_pids, q_cams, g_cams = market_like(rng)
    # features with identity structure, so CMC/mAP are far from chance and ranks are not all random
    centres = rng.normal(size=(80, 32))
    qf = centres[q_pids % 80] + rng.normal(scale=1.2, size=(len(q_pids), 32))
    gf = centres[g_pids % 80] + rng.normal(scale=1.2, size=(len(g_pids), 32))
    qf, gf = torch.tensor(qf, dtype=torch.float32), torch.tensor(gf, dtype=torch.float32)
    for metric in ("euclidean", "cosine"):
        distmat = tr_distance(qf, gf, metric).numpy()
        ref = torchreid_rank(distmat, q_pids, g_pids, q_cams, g_cams)
        cmc, mAP, num_valid = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, return_num_valid=True)
        assert_same((cmc, mAP), ref)
        assert 0.3 < cmc[0] < 1.0  # a meaningful ranking, not a degenerate one
        # queries 0 and 1 have no valid match; all others do (same-pid images on other cameras)
        expected_valid = sum(np.any((g_pids == p) & (g_cams != c)) for p, c in zip(q_pids, q_cams))
        assert num_valid == expected_valid == len(q_pids) - 2


def test_ties_follow_torchreid_order_exactly():
    rng = np.random.default_rng(5)
    q_pids, g_pids, q_cams, g_cams = market_like(rng, num_q=80, num_g=600, num_ids=30)
    distmat = rng.integers(0, 12, (80, 600)).astype(np.float32)  # massive ties between matches and others
    ours = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, chunk_size=17)
    assert_same(ours, torchreid_rank(distmat, q_pids, g_pids, q_cams, g_cams))
    distmat[rng.random(distmat.shape) < 0.05] = np.inf  # infinite distances rank last, tied with each other
    ours = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, chunk_size=17)
    assert_same(ours, torchreid_rank(distmat, q_pids, g_pids, q_cams, g_cams))


def test_hand_computed_example():
    # one query (pid 1, cam 0); gallery sorted by distance: [1/cam0 (removed), 2, 1/cam1, 0 (distractor), 1/cam2]
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([1, 2, 1, 0, 1])
    g_cams = np.array([0, 1, 1, 2, 2])
    cmc, mAP = evaluate_rank(distmat, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=4)
    # kept ranking: 2, 1, 0, 1 -> matches at ranks 2 and 4: AP = (1/2 + 2/4) / 2
    assert mAP == pytest.approx(0.5)
    np.testing.assert_array_equal(cmc, [0.0, 1.0, 1.0, 1.0])


def test_chunked_equals_unchunked_and_fused_equals_distmat():
    rng = np.random.default_rng(7)
    q_pids, g_pids, q_cams, g_cams = market_like(rng, num_q=90, num_g=700, num_ids=40)
    gen = torch.Generator().manual_seed(7)
    qf, gf = torch.randn(90, 24, generator=gen), torch.randn(700, 24, generator=gen)
    distmat = compute_distance_matrix(qf, gf, "euclidean")
    full = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, chunk_size=10_000)
    for cs in (1, 7, 64):
        assert_same(evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, chunk_size=cs), full)
    fused = evaluate_rank(None, q_pids, g_pids, q_cams, g_cams, qf=qf, gf=gf, chunk_size=90)
    assert_same(fused, full)


def test_distances_match_float64_reference_and_torchreid():
    rng = np.random.default_rng(11)
    q, g = rng.normal(size=(50, 64)), rng.normal(size=(300, 64))
    ref_euc = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    ref_cos = 1.0 - qn @ gn.T
    for metric, ref in (("euclidean", ref_euc), ("cosine", ref_cos)):
        d64 = compute_distance_matrix(q, g, metric, chunk_size=13, dtype=torch.float64).numpy()
        np.testing.assert_allclose(d64, ref, rtol=1e-10, atol=1e-10)
        d32 = compute_distance_matrix(q.astype(np.float32), g.astype(np.float32), metric, chunk_size=13)
        assert d32.dtype == torch.float32
        np.testing.assert_allclose(d32.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        dfaiss = compute_distance_matrix(q.astype(np.float32), g.astype(np.float32), metric, backend="faiss")
        np.testing.assert_allclose(dfaiss.numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        tr = tr_distance(torch.tensor(q, dtype=torch.float32), torch.tensor(g, dtype=torch.float32), metric)
        np.testing.assert_allclose(d32.numpy(), tr.numpy(), rtol=1e-5, atol=1e-4)


def test_evaluate_features_summary():
    rng = np.random.default_rng(2)
    q_pids, g_pids, q_cams, g_cams = market_like(rng, num_q=60, num_g=400, num_ids=25)
    gen = torch.Generator().manual_seed(2)
    qf, gf = torch.randn(60, 16, generator=gen), torch.randn(400, 16, generator=gen)
    res = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric="cosine")
    ref_cmc, ref_mAP = torchreid_rank(tr_distance(qf, gf, "cosine").numpy(), q_pids, g_pids, q_cams, g_cams)
    expected_valid = sum(np.any((g_pids == p) & (g_cams != c)) for p, c in zip(q_pids, q_cams))
    assert res["num_valid_queries"] == expected_valid < 60
    assert res["mAP"] == pytest.approx(ref_mAP, abs=1e-6)
    for r in (1, 5, 10):
        assert res[f"rank{r}"] == pytest.approx(ref_cmc[r - 1], abs=1e-6)


def test_short_gallery_pads_cmc_and_bad_inputs_raise():
    # 3 gallery images, max_rank cut to 3; the kept list of the query has 2 entries -> padded with 1
    distmat = np.array([[0.3, 0.1, 0.2]])
    cmc, mAP = evaluate_rank(distmat, [1], [1, 2, 1], [0], [0, 1, 1], max_rank=50)
    np.testing.assert_array_equal(cmc, [0.0, 1.0, 1.0])
    assert mAP == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query has a correct match"):
        evaluate_rank(distmat, [5], [1, 2, 1], [0], [0, 1, 1])
    with pytest.raises(ValueError, match="contain NaN"):
        evaluate_rank(np.array([[np.nan, 0.1, 0.2]]), [1], [1, 2, 1], [0], [0, 1, 1])
    with pytest.raises(ValueError, match="g_pids has 2 entries"):
        evaluate_rank(distmat, [1], [1, 2], [0], [0, 1, 1])


def test_exclude_drops_gallery_rows_per_query_like_removing_them():
    """``exclude`` must give exactly what evaluating each query on a gallery without those rows gives."""
    from posereid.reid_integration.evaluate import evaluate_rank as ours

    rng = np.random.default_rng(7)
    nq, ng = 12, 60
    q_pids = rng.integers(1, 6, nq)
    g_pids = rng.integers(1, 6, ng)
    q_cams = rng.integers(0, 3, nq)
    g_cams = rng.integers(0, 3, ng)
    dist = rng.random((nq, ng)).astype(np.float32)
    exclude = np.full((nq, 2), -1)
    for i in range(nq):  # drop up to two of the query's own matches (e.g. a pair's source and target)
        own = np.flatnonzero(g_pids == q_pids[i])
        exclude[i, : min(2, own.size)] = own[:2]
    cmc, mAP = ours(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5, exclude=exclude)

    firsts, aps = [], []
    for i in range(nq):
        keep = np.setdiff1d(np.arange(ng), exclude[i][exclude[i] >= 0])
        try:
            c, a = ours(
                dist[i : i + 1, keep],
                q_pids[i : i + 1],
                g_pids[keep],
                q_cams[i : i + 1],
                g_cams[keep],
                max_rank=5,
            )
        except ValueError:  # no valid match left for this query: skipped
            continue
        firsts.append(c)
        aps.append(a)
    np.testing.assert_allclose(cmc, np.mean(firsts, 0), atol=1e-6)
    assert mAP == pytest.approx(float(np.mean(aps)), abs=1e-9)
    plain_cmc, plain_map = ours(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    assert mAP != pytest.approx(plain_map)  # the exclusion really changed something
