"""Tests of NCSNv2 annealed Langevin dynamics (Proposition 3, Technique 4, final denoising)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers, schedules
from diffusion_jax.samplers.langevin import langevin_variance_recursion


def test_technique4_step_size_keeps_variance_ratio_near_one():
  # One data point: the perturbed density is N(p, sigma_i^2 I), so Proposition 3 is exact.
  dim, num, levels, steps = 8, 4000, 10, 20
  sigma_max, sigma_min = 1.0, 0.01
  sigmas = schedules.geometric_sigmas(sigma_max, sigma_min, levels)
  ratio = schedules.ncsn_sigma_ratio(sigma_max, sigma_min, levels)
  eps = schedules.ncsn_solve_step_size(ratio, sigma_min, steps)
  point = np.linspace(-0.5, 0.5, dim)[None]
  denoise = samplers.point_set_denoiser(point)
  ends = [(i + 1) * steps for i in range(levels)] + [levels * steps + 1]

  @jax.jit
  def run(z, key):
    x0 = point + ratio * sigma_max * z  # Proposition 3 starts level 1 at variance (gamma sigma_1)^2
    return samplers.langevin_sample(
      denoise, x0, sigmas, n_steps_each=steps, step_lr=eps, rng=key, return_trajectory=ends
    )

  x, traj = run(jax.random.normal(jax.random.key(0), (num, dim)), jax.random.key(1))
  var = np.var(np.asarray(traj[:-1], np.float64) - point, axis=1, ddof=1).mean(-1)  # [L]
  got = var / np.asarray(sigmas, np.float64) ** 2
  want = langevin_variance_recursion(ratio, eps, sigma_min, levels, steps)
  se = np.sqrt(2 / (num * dim - 1))
  np.testing.assert_allclose(got, want, rtol=4.5 * se)
  # Level 1 is Proposition 3's closed form; the eps of Technique 4 keeps every level near 1.
  prop3 = float(schedules.ncsn_variance_ratio(eps, ratio, sigma_min, steps))
  np.testing.assert_allclose(want[0], prop3, rtol=1e-6)
  assert abs(prop3 - 1) < 0.08  # the minimum of |ratio - 1| need not be 0 (paper: 1.055)
  np.testing.assert_array_less(np.abs(got - 1), 0.08 + 4.5 * se)
  # A 4x larger or smaller eps drifts away from 1 (the test can tell).
  for bad in (4 * eps, eps / 4):
    assert abs(langevin_variance_recursion(ratio, bad, sigma_min, levels, steps)[-1] - 1) > 0.25
  # The final denoising step lands on the data point.
  np.testing.assert_allclose(np.asarray(x), np.broadcast_to(point, x.shape), atol=1e-5)
  np.testing.assert_array_equal(traj[-1], x)


def test_annealed_langevin_samples_mixture_weights_and_moments():
  weights, means, stds = [0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.4]
  gm = samplers.GaussianMixture(weights, means, stds)
  num, levels, steps = 4000, 20, 100
  sigmas = schedules.geometric_sigmas(4.0, 0.05, levels)
  ratio = schedules.ncsn_sigma_ratio(4.0, 0.05, levels)
  eps = schedules.ncsn_solve_step_size(ratio, 0.05, steps)
  run = jax.jit(
    lambda z, k: samplers.langevin_sample(
      gm.denoise, 4.0 * z, sigmas, n_steps_each=steps, step_lr=eps, rng=k, final_denoise=False
    )
  )
  x = np.asarray(run(jax.random.normal(jax.random.key(2), (num, 2)), jax.random.key(3)))
  st = gm.summary(x)
  w = gm.weights
  np.testing.assert_array_less(np.abs(st['weights'] - w), 4.5 * np.sqrt(w * (1 - w) / num) + 0.01)
  nk = st['counts'][:, None]
  # Without the final denoising step the samples carry the last level's noise: var + sigma_L^2.
  var = gm.variances + 0.05**2
  np.testing.assert_array_less(
    np.abs(st['means'] - np.asarray(means)), 4.5 * np.sqrt(var / nk) + 0.01
  )
  # Annealed Langevin over-disperses a little (Proposition 3's ratio is above 1 and small
  # levels mix slowly), so the variances get a 12% allowance beyond the sampling error.
  np.testing.assert_array_less(
    np.abs(st['variances'] / var - 1),
    np.broadcast_to(4.5 * np.sqrt(2 / (nk - 1)) + 0.12, var.shape),
  )


def test_bad_arguments_raise_value_errors():
  d = samplers.point_set_denoiser(np.zeros((1, 2)))
  x = jnp.zeros((2, 2))
  key = jax.random.key(0)
  sig = schedules.geometric_sigmas(1.0, 0.01, 5)
  with pytest.raises(ValueError, match='step_lr'):
    samplers.langevin_sample(d, x, sig, n_steps_each=3, step_lr=0.0, rng=key)
  with pytest.raises(ValueError, match='n_steps_each must be >= 1'):
    samplers.langevin_sample(d, x, sig, n_steps_each=0, step_lr=1e-5, rng=key)
  with pytest.raises(ValueError, match='sigmas must be positive'):
    samplers.langevin_sample(d, x, jnp.array([1.0, 0.0]), n_steps_each=3, step_lr=1e-5, rng=key)
  with pytest.raises(ValueError, match='strictly decreasing'):
    samplers.langevin_sample(d, x, sig[::-1], n_steps_each=3, step_lr=1e-5, rng=key)
