"""Tests of the variational bound: KL, discretized decoder, prior, importance sampling, bits/dim."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_ndtr, ndtr

from diffusion_jax.objectives import DiffusionConfig, create_objective, importance, vlb
from diffusion_jax.schedules import DiscreteSchedule

LN2 = math.log(2.0)


def _grid_point(k: int) -> float:
  """Centre of bin k of the 256-level grid in [-1, 1]."""
  return -1.0 + 2.0 * k / 255.0


def test_normal_kl_closed_form_and_monte_carlo():
  rng = np.random.default_rng(0)
  m1, m2 = rng.normal(size=5), rng.normal(size=5)
  lv1, lv2 = rng.normal(size=5), rng.normal(size=5)
  s1, s2 = np.exp(0.5 * lv1), np.exp(0.5 * lv2)
  expected = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
  got = np.asarray(vlb.normal_kl(m1, lv1, m2, lv2))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Monte Carlo: E_{x ~ N1}[log N1(x) - log N2(x)].
  n = 400_000
  x = m1[:, None] + s1[:, None] * rng.normal(size=(5, n))
  log_ratio = (
    -0.5 * ((x - m1[:, None]) / s1[:, None]) ** 2
    - np.log(s1[:, None])
    + 0.5 * ((x - m2[:, None]) / s2[:, None]) ** 2
    + np.log(s2[:, None])
  )
  mc, se = log_ratio.mean(axis=1), log_ratio.std(axis=1) / math.sqrt(n)
  assert np.all(np.abs(mc - got) < 5 * se + 1e-6)


def _reference_decoder(x, mean, log_scale):
  """float64 log-probabilities of the 256 bins with edge bins taking the tails."""
  h = 1.0 / 255.0
  s = np.exp(log_scale)
  upper, lower = (x - mean + h) / s, (x - mean - h) / s
  mid = np.log(np.maximum(ndtr(upper) - ndtr(lower), 1e-300))
  # Use the mirrored form where the direct difference would underflow.
  mirrored = np.log(np.maximum(ndtr(-lower) - ndtr(-upper), 1e-300))
  mid = np.where(lower > 0, mirrored, mid)
  return np.where(x < -0.999, log_ndtr(upper), np.where(x > 0.999, log_ndtr(-lower), mid))


_decoder_jit = jax.jit(vlb.discretized_gaussian_log_likelihood)


@pytest.mark.parametrize(
  'mean,log_scale', [(0.0, np.log(0.1)), (0.93, np.log(0.004)), (-1.2, np.log(0.3)), (0.3, -7.0)]
)
def test_discretized_gaussian_sums_to_one_and_matches_float64(mean, log_scale):
  bins = np.array([_grid_point(k) for k in range(256)])
  logp = np.asarray(
    _decoder_jit(jnp.asarray(bins, jnp.float32), jnp.float32(mean), jnp.float32(log_scale)),
    np.float64,
  )
  assert abs(np.exp(logp).sum() - 1.0) < 1e-5
  ref = _reference_decoder(bins, mean, log_scale)
  # Compare where the bin carries visible mass (log-probs above float32's reach differ).
  visible = ref > -30
  np.testing.assert_allclose(logp[visible], ref[visible], rtol=2e-4, atol=2e-4)


def test_prior_term_vanishes_for_cosine_schedule():
  sched = DiscreteSchedule.from_name('cosine', 1000)
  tables = vlb.Tables(sched)
  x0 = jnp.linspace(-1.0, 1.0, 32).reshape(2, 4, 4, 1)
  got = np.asarray(vlb.prior_bits_per_dim(x0, tables))
  abar = sched.alphas_cumprod[-1]
  x = np.asarray(x0, np.float64).reshape(2, -1)
  expected = (0.5 * (abar * x**2 - np.log1p(-abar) - abar)).mean(axis=1) / LN2
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-8)
  assert np.all(got < 1e-6)
  # The linear DDPM schedule leaves a small but visible prior term.
  linear = np.asarray(vlb.prior_bits_per_dim(x0, vlb.Tables(DiscreteSchedule.from_name('linear'))))
  assert np.all(linear > got) and np.all(linear < 1e-3)


def test_history_update_matches_sequential_reference():
  num_t, k = 5, 3
  rng = np.random.default_rng(1)
  state = importance.init_history(num_t, k)
  ref_hist, ref_counts = np.zeros((num_t, k)), np.zeros(num_t, int)
  update = jax.jit(importance.update_history)
  for _ in range(4):
    t = rng.integers(0, num_t, size=7)
    losses = rng.normal(size=7).astype(np.float32)
    state = update(state, jnp.asarray(t), jnp.asarray(losses))
    for ti, li in zip(t, losses):
      if ref_counts[ti] == k:
        ref_hist[ti, :-1] = ref_hist[ti, 1:]
        ref_hist[ti, -1] = li
      else:
        ref_hist[ti, ref_counts[ti]] = li
        ref_counts[ti] += 1
  np.testing.assert_allclose(np.asarray(state['history']), ref_hist, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(state['counts']), ref_counts)
  # Probabilities: uniform until every index is full, then sqrt(E[L^2]) with a uniform share.
  p = np.asarray(importance.probabilities(state, 0.001))
  if np.all(ref_counts == k):
    w = np.sqrt((ref_hist**2).mean(axis=1))
    np.testing.assert_allclose(p, 0.999 * w / w.sum() + 0.001 / num_t, rtol=1e-5)
  else:
    np.testing.assert_allclose(p, np.full(num_t, 1 / num_t), rtol=1e-6)


def _zero_model(
  params, x, noise_level, label=None, self_cond=None, augment=None, train=False, rng=None
):
  """Predicts eps = 0 (so x0_hat = x_t / sqrt(abar)): a model with a large, t-dependent L_vlb."""
  return jnp.zeros_like(x) * params['w'], None


def test_importance_sampled_vlb_is_unbiased():
  # (The linear schedule, scaled by 1000 / T, needs T >= 20.)
  kwargs = dict(objective='ddpm', num_timesteps=16, loss='vlb', beta_schedule='cosine')
  obj_is = create_objective(DiffusionConfig(importance_sampling=True, **kwargs))
  obj_uniform = create_objective(DiffusionConfig(**kwargs))
  params = {'w': jnp.float32(1.0)}
  x0 = jnp.full((512, 2, 2, 1), _grid_point(140), jnp.float32)
  batch = {'image': x0, 'label': jnp.zeros((512,), jnp.int32)}

  def run(obj, state, keys):
    """Loss steps in one scan: importance-weighted per-example losses [steps, B], state."""

    def step(state, key):
      _, metrics, state = obj.loss(_zero_model, params, batch, key, state)
      w = metrics.get('importance_weight', jnp.ones((512,)))
      return state, metrics['loss_per_example'] * w

    state, weighted = jax.lax.scan(step, state, keys)
    return weighted, state

  keys = jax.random.split(jax.random.key(0), 26)
  # 2 steps fill the history (32 draws per index on average), 12 more estimate the mean.
  weighted, state = jax.jit(run, static_argnums=0)(obj_is, obj_is.init_state(), keys[:14])
  assert bool(importance.is_warm(state))
  p = np.asarray(jax.jit(importance.probabilities)(state))
  assert p.max() / p.min() > 3.0  # the sampler really is non-uniform
  est_is = np.asarray(weighted[2:], np.float64).ravel()
  uniform, _ = jax.jit(run, static_argnums=0)(obj_uniform, {}, keys[14:])
  est_uniform = np.asarray(uniform, np.float64).ravel()
  se = math.sqrt(est_is.var() / est_is.size + est_uniform.var() / est_uniform.size)
  assert abs(est_is.mean() - est_uniform.mean()) < 4.0 * se
  # Importance sampling by the loss's second moment lowers the estimator's variance.
  assert est_is.var() < est_uniform.var()


def _point_oracle(schedule, c, prediction='x0', v=None, delta=0.0):
  """The exact model of the one-point data set {c}: predicts c + delta (or its eps / v)."""
  abar_table = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
  per_step = 1000.0 / schedule.num_timesteps  # the model is fed t * 1000 / T

  def apply(
    params, x, noise_level, label=None, self_cond=None, augment=None, train=False, rng=None
  ):
    index = jnp.round(noise_level / per_step).astype(jnp.int32)
    abar = abar_table[index].reshape(-1, 1, 1, 1)
    x0 = jnp.full_like(x, c + delta)
    eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)
    out = {'x0': x0, 'eps': eps, 'v': jnp.sqrt(abar) * eps - jnp.sqrt(1 - abar) * x0}[prediction]
    if v is not None:
      out = jnp.concatenate([out, jnp.full_like(x, v)], axis=-1)
    return out, None

  return apply


@pytest.mark.parametrize('prediction', ['x0', 'eps'])
def test_bits_per_dim_of_exact_model_matches_closed_form(prediction):
  num_t = 40
  sched = DiscreteSchedule.from_name('linear', num_t)
  c = _grid_point(200)
  x0 = jnp.full((3, 2, 2, 1), c, jnp.float32)
  apply = _point_oracle(sched, c, prediction)
  total, terms, prior = jax.jit(
    lambda x, r: vlb.nll_bits_per_dim(
      apply, {}, x, r, sched, prediction=prediction, return_terms=True
    )
  )(x0, jax.random.key(0))
  # KL terms vanish (model mean = posterior mean, model variance = betatilde); the decoder
  # is N(c, betatilde_2) (its clipped variance) integrated over c's bin of half-width 1/255.
  s = math.sqrt(sched.posterior_variance[1])
  decoder = -math.log(ndtr(1 / 255 / s) - ndtr(-1 / 255 / s)) / LN2
  abar = sched.alphas_cumprod[-1]
  prior_ref = 0.5 * (abar * c**2 - math.log1p(-abar) - abar) / LN2
  np.testing.assert_allclose(np.asarray(terms[1:]), 0.0, atol=2e-4)
  np.testing.assert_allclose(np.asarray(terms[0]), decoder, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(prior), prior_ref, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(total), decoder + prior_ref, rtol=1e-3, atol=5e-4)


def test_bits_per_dim_with_offset_mean_and_learned_variance():
  """A wrong x0 by delta and v = 1 (Sigma = beta): every KL term has a closed form."""
  num_t, delta = 30, 0.05
  sched = DiscreteSchedule.from_name('cosine', num_t)
  c = _grid_point(100)
  x0 = jnp.full((2, 2, 2, 1), c, jnp.float32)
  apply = _point_oracle(sched, c, 'x0', v=1.0, delta=delta)
  total, terms, prior = vlb.nll_bits_per_dim(
    apply,
    {},
    x0,
    jax.random.key(1),
    sched,
    prediction='x0',
    learn_variance=True,
    clip_denoised=False,
    return_terms=True,
  )
  betas, post = sched.betas, sched.posterior_variance
  mean_gap = sched.posterior_mean_coef1 * delta
  with np.errstate(divide='ignore'):  # betatilde_1 = 0; index 0 is the decoder instead.
    kl = 0.5 * (np.log(betas / post) + post / betas - 1.0 + mean_gap**2 / betas)
  s0 = math.sqrt(betas[0])
  decoder = -math.log(ndtr((1 / 255 - delta) / s0) - ndtr((-1 / 255 - delta) / s0))
  expected = np.concatenate([[decoder], kl[1:]]) / LN2
  np.testing.assert_allclose(np.asarray(terms[:, 0]), expected, rtol=2e-3, atol=2e-5)
  np.testing.assert_allclose(np.asarray(total), expected.sum() + np.asarray(prior), rtol=2e-3)
