"""Tests of NCSNv2 annealed Langevin dynamics (Proposition 3, Technique 4, final denoising)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

from diffusion_jax import samplers, schedules
from diffusion_jax.objectives import DiffusionConfig, create_objective
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


@pytest.mark.parametrize('data_range,clip', [('unit', False), ('symmetric', False), ('unit', True)])
def test_ncsn_objective_sampler_matches_the_reference_loop(data_range, clip):
  """NCSNObjective.sample against a float64 transcription of the reference's
  anneal_Langevin_dynamics (ermongroup/ncsnv2 models/__init__.py) run in the network's
  data range: uniform start, alpha_i = eps (sigma_i / sigma_L)^2, score F(x) / sigma,
  the final denoising step, then inverse_data_transform (clamped when clip)."""
  levels, steps, step_lr, k, m = 4, 3, 2e-3, 0.7, 0.3
  cfg = DiffusionConfig(
    objective='ncsn',
    sigma_max=1.0,
    sigma_min=0.05,
    num_levels=levels,
    data_range=data_range,
    self_cond_rate=0.0,
    label_drop_prob=0.0,
  )
  obj = create_objective(cfg)

  def apply(params, x, noise_level, **_):
    return -k * (x - m), None  # a noise-unconditional network F; the score is F / sigma

  noise = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
  rng = jax.random.key(1)
  settings = samplers.SampleSettings(
    sampler='langevin', n_steps_each=steps, step_lr=step_lr, clip_x0=clip
  )
  run = jax.jit(lambda n, r: samplers.sample(obj, apply, {}, n, None, r, settings))
  out = np.asarray(run(noise, rng))

  a, c = {'unit': (0.5, 0.5), 'symmetric': (1.0, 0.0)}[data_range]  # x_net = a x + c
  sigmas = np.geomspace(1.0, 0.05, levels)
  x = a * (2.0 * ndtr(np.asarray(noise, np.float64)) - 1.0) + c  # torch.rand -> data_transform
  assert x.min() >= c - a and x.max() <= c + a
  for i, sigma in enumerate(sigmas):
    step_size = step_lr * (sigma / sigmas[-1]) ** 2
    for j in range(steps):
      grad = -k * (x - m) / sigma
      # The sampler's per-step draw (fold_in of the step number), the same z in either space.
      z = np.asarray(jax.random.normal(jax.random.fold_in(rng, i * steps + j), x.shape), np.float64)
      x = x + step_size * grad + z * np.sqrt(step_size * 2)
  x = x + sigmas[-1] ** 2 * (-k * (x - m) / sigmas[-1])
  want = (x - c) / a
  if clip:
    want = np.clip(want, -1.0, 1.0)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
  if clip:
    assert np.any(np.abs(want) == 1.0)  # the clamp is exercised
  else:
    assert np.abs(want).max() > 1.0


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
