"""Pure geometry functions against independent brute-force computations."""

import math

import pytest
import torch

from geomkit.geometry import angle_deg, magnitude, nearest, norm_stats, row_norms


def _brute(table, q, k, exclude):
    cos = torch.nn.functional.cosine_similarity(table.double(), q.double()[None], dim=1)
    dist = (table.double() - q.double()).norm(dim=1)
    cos[exclude] = -math.inf
    dist[exclude] = math.inf
    return cos.topk(k), dist.topk(k, largest=False)


@pytest.mark.parametrize("chunk", [7, 64, 100000])
def test_nearest_matches_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(500, 16, generator=g) * torch.rand(500, 1, generator=g) * 3
    queries = table[[3, 10]] + 0.01 * torch.randn(2, 16, generator=g)
    cos, euc = nearest(table, queries, k=8, exclude=[[3], [10]], chunk_rows=chunk)
    for qi, ex in enumerate([3, 10]):
        bc, be = _brute(table, queries[qi], 8, [ex])
        assert cos[qi].ids.tolist() == bc.indices.tolist()
        assert euc[qi].ids.tolist() == be.indices.tolist()
        torch.testing.assert_close(cos[qi].scores.double(), bc.values, atol=1e-5, rtol=0)
        torch.testing.assert_close(euc[qi].scores.double(), be.values, atol=1e-4, rtol=0)
        assert ex not in cos[qi].ids.tolist() and ex not in euc[qi].ids.tolist()


def test_rankings_differ_when_norms_vary():
    """Same directions, different norms: cosine ranks by direction, Euclidean by closeness in norm."""
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    near_dir = q + 0.05 * torch.randn(5, 32, generator=g)  # same direction ...
    near_dir = near_dir / near_dir.norm(dim=1, keepdim=True) * 10  # ... far away in norm
    unrelated = torch.randn(5, 32, generator=g)
    unrelated = unrelated / unrelated.norm(dim=1, keepdim=True) * 1.0  # random direction, similar norm
    table = torch.cat([near_dir, unrelated])
    cos, euc = nearest(table, q, k=5)
    assert set(cos[0].ids.tolist()) == set(range(5))
    assert set(euc[0].ids.tolist()) == set(range(5, 10))
    # with equal norms the two rankings agree (||a-b||^2 = 2 - 2cos)
    unit = table / table.norm(dim=1, keepdim=True)
    cos, euc = nearest(unit, q, k=10)
    assert cos[0].ids.tolist() == euc[0].ids.tolist()


def test_zero_rows_are_never_cosine_neighbours_and_excluded_from_stats():
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    cos, _ = nearest(table, torch.tensor([1.0, 0.1]), k=2)
    assert set(cos[0].ids.tolist()) == {1, 2}
    stats = norm_stats(row_norms(table))
    assert stats["count"] == 2 and stats["zero_rows"] == 2
    assert stats["mean"] == pytest.approx(1.5) and stats["min"] == 1.0 and stats["max"] == 2.0
    assert magnitude(table, "mean") == pytest.approx(1.5)
    assert magnitude(table, "min") == 1.0
    assert magnitude(table, "2.5") == 2.5


def test_angle_accurate_for_tiny_angles():
    a = torch.tensor([1.0, 0.0, 0.0])
    for theta in [1e-6, 1e-3, 0.5, 2.0, 3.0]:
        b = torch.tensor([math.cos(theta), math.sin(theta), 0.0]) * 7.0
        assert angle_deg(a, b).item() == pytest.approx(math.degrees(theta), rel=1e-6)
