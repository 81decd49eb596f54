"""The optimisers on synthetic tensors: Algorithm 1's geometry, checked against independent
computations (numpy in float64, angles via geomkit.geometry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geomkit.geometry import angle_deg, cosine
from geomkit.train.optim import RSGD, SphereAdamW, lr_at, rsgd_update


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture
def rows():
    g = torch.Generator().manual_seed(0)
    v = unit(torch.randn(5, 64, generator=g, dtype=torch.float64))
    grad = torch.randn(5, 64, generator=g, dtype=torch.float64) * torch.tensor([1e-6, 1e-2, 1.0, 1e2, 1e6])[:, None].double()
    return v, grad


@pytest.mark.parametrize("lr", [1e-4, 5e-3, 0.1, 1.0])
def test_one_step_turns_every_row_by_atan_lr(rows, lr):
    v, grad = rows
    new = rsgd_update(v, grad, lr)
    assert torch.allclose(new.norm(dim=-1), torch.ones(5, dtype=torch.float64), atol=1e-14)
    turned = angle_deg(v, new)
    assert torch.allclose(turned, torch.full((5,), math.degrees(math.atan(lr)), dtype=torch.float64), atol=1e-10)


def test_step_matches_algorithm_1_in_numpy(rows):
    v, grad = rows
    kappa, lr = 0.3, 0.05
    mu = unit(torch.ones(64, dtype=torch.float64))
    new = rsgd_update(v, grad, lr, kappa, mu).numpy()
    for i in range(5):
        vi, gi, m = v[i].numpy(), grad[i].numpy(), mu.numpy()
        g_euc = gi - kappa * m  # line 7: the prior gradient -kappa mu added
        g = g_euc - (g_euc @ vi) * vi  # line 8
        g = g / np.linalg.norm(g)  # line 9
        w = (vi - lr * g) / np.linalg.norm(vi - lr * g)  # line 10
        np.testing.assert_allclose(new[i], w, atol=1e-12)


def test_gradient_size_does_not_matter(rows):
    v, grad = rows
    assert torch.allclose(rsgd_update(v, grad, 0.01), rsgd_update(v, 1e4 * grad, 0.01), atol=1e-14)


def test_prior_alone_pulls_towards_mu():
    g = torch.Generator().manual_seed(1)
    v = unit(torch.randn(3, 32, generator=g, dtype=torch.float64))
    mu = unit(torch.randn(32, generator=g, dtype=torch.float64))
    new = rsgd_update(v, torch.zeros_like(v), 0.01, kappa=1e-4, mu=mu)
    before, after = cosine(v, mu.expand_as(v)), cosine(new, mu.expand_as(v))
    assert (after > before).all()
    # the pull goes straight along the great circle to mu: the angle to mu shrinks by atan(lr)
    shrink = angle_deg(v, mu.expand_as(v)) - angle_deg(new, mu.expand_as(v))
    assert torch.allclose(shrink, torch.full((3,), math.degrees(math.atan(0.01)), dtype=torch.float64), atol=1e-9)


def test_kappa_tilts_the_step_towards_mu(rows):
    v, _ = rows
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(5, 64, generator=g, dtype=torch.float64)
    mu = unit(torch.randn(64, generator=g, dtype=torch.float64))
    plain = rsgd_update(v, grad, 0.05)
    pulled = rsgd_update(v, grad, 0.05, kappa=float(grad.norm(dim=-1).max()), mu=mu)
    assert (cosine(pulled, mu.expand_as(v)) > cosine(plain, mu.expand_as(v))).all()


def test_zero_gradient_and_v_equal_mu_stay_put(rows):
    v, _ = rows
    assert torch.equal(rsgd_update(v, torch.zeros_like(v), 0.1), v)
    # v == mu, no data gradient: the projected prior gradient is rounding noise, not a direction
    new = rsgd_update(v[:1], torch.zeros_like(v[:1]), 0.1, kappa=1.0, mu=v[0])
    assert torch.allclose(new, v[:1], atol=1e-15)


def test_float32_rows_keep_unit_norm():
    g = torch.Generator().manual_seed(3)
    v = unit(torch.randn(2, 1280, generator=g))
    for _ in range(200):
        v = rsgd_update(v, torch.randn(2, 1280, generator=g), 5e-3, 1e-4, unit(torch.ones(1280)))
    assert v.dtype == torch.float32
    assert torch.allclose(v.norm(dim=-1), torch.ones(2), atol=1e-6)


def test_rsgd_optimizer_is_the_function(rows):
    v, grad = rows
    p = torch.nn.Parameter(v.clone())
    mu = unit(torch.ones(64, dtype=torch.float64))
    opt = RSGD([dict(params=[p], mu=mu, kappa=0.2)], lr=0.03)
    p.grad = grad.clone()
    opt.step()
    assert torch.equal(p.detach(), rsgd_update(v, grad, 0.03, 0.2, mu))


def test_sphere_adamw_ablation_stays_on_the_sphere_and_differs(rows):
    v, grad = rows
    p = torch.nn.Parameter(v.clone().float())
    opt = SphereAdamW([dict(params=[p], mu=unit(torch.ones(64)), kappa=1e-4)], lr=0.05)
    p.grad = grad.float().clone()
    opt.step()
    assert torch.allclose(p.detach().norm(dim=-1), torch.ones(5), atol=1e-6)
    turned = angle_deg(v, p.detach().double())
    # Adam's first step moves every coordinate by ~lr: the turn depends on the row, unlike RSGD's atan(lr)
    assert not torch.allclose(turned, torch.full((5,), math.degrees(math.atan(0.05)), dtype=torch.float64), atol=1e-3)


def test_lr_schedules():
    assert lr_at(7, 0.01, 100) == 0.01
    assert lr_at(1, 0.01, 100, "cosine") == pytest.approx(0.01)
    assert lr_at(101, 0.01, 100, "cosine") == pytest.approx(0.0, abs=1e-12)
