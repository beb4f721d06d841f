"""Tests of the training objectives: noising, targets, EDM, NCSN, self-conditioning, bridges."""

import dataclasses
import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffusion_jax import parameterization, samplers
from diffusion_jax import schedules as schedules_lib
from diffusion_jax.objectives import DiffusionConfig, create_objective, self_conditioning
from diffusion_jax.objectives.chen import noise_input
from diffusion_jax.objectives.edm import effective_target
from diffusion_jax.parameterization import prediction_target

C = 0.2  # the one-point data set {C} whose exact denoiser is known


def _cfg(**kw) -> DiffusionConfig:
  base = dict(self_cond_rate=0.0, label_drop_prob=0.0)
  base.update(kw)
  return DiffusionConfig(**base)


# ---------------------------------------------------------------------------
# Forward process and targets.


@pytest.mark.parametrize('scale', [1.0, 0.5])
def test_chen_noising_moments_and_normalization(scale):
  n = 40_000
  gamma = jnp.array([0.9, 0.5, 0.05], jnp.float32)
  x0 = jnp.broadcast_to(jnp.array([0.7, -0.3, 0.4]).reshape(3, 1, 1, 1), (3, n, 1, 1))
  eps = jax.random.normal(jax.random.key(0), x0.shape)
  x_t, x_in = noise_input(x0, eps, gamma, scale, 'none')
  x_t = np.asarray(x_t, np.float64).reshape(3, n)
  g = np.asarray(gamma, np.float64)
  mean_ref = np.sqrt(g) * scale * np.array([0.7, -0.3, 0.4])
  assert np.all(np.abs(x_t.mean(1) - mean_ref) < 5 * np.sqrt((1 - g) / n))
  np.testing.assert_allclose(x_t.var(1), 1 - g, rtol=5 * math.sqrt(2 / n))
  # Unit-variance data: the analytic normalization gives unit variance.
  data = jax.random.normal(jax.random.key(1), x0.shape)
  _, x_in = noise_input(data, eps, gamma, scale, 'analytic')
  var = np.asarray(x_in, np.float64).reshape(3, n).var(1)
  np.testing.assert_allclose(var, 1.0, rtol=6 * math.sqrt(2 / n))
  # Per-example normalization: every example has unit standard deviation exactly.
  _, x_in = noise_input(x0[:, :64], eps[:, :64], gamma, scale, 'per_example')
  np.testing.assert_allclose(np.asarray(x_in).reshape(3, -1).std(1), 1.0, rtol=1e-4)


def test_prediction_targets_round_trip():
  k1, k2 = jax.random.split(jax.random.key(2))
  x0 = 0.8 * jax.random.normal(k1, (4, 3, 3, 2))
  eps = jax.random.normal(k2, x0.shape)
  gamma = jnp.array([0.99, 0.6, 0.2, 0.01])
  g = gamma.reshape(4, 1, 1, 1)

  @jax.jit
  def round_trip(x0, eps):
    x_t = jnp.sqrt(g) * x0 + jnp.sqrt(1 - g) * eps
    out = {}
    for kind in ('eps', 'x0', 'v'):
      target = prediction_target(kind, x0, eps, gamma)
      out[kind] = (target, *parameterization.predict_x0_eps(target, x_t, gamma, kind))
    return out

  for kind, (_, x0_hat, eps_hat) in round_trip(x0, eps).items():
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4 if kind != 'eps' else 5e-3)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-4 if kind != 'x0' else 5e-3)
  np.testing.assert_allclose(
    round_trip(x0, eps)['v'][0], jnp.sqrt(g) * eps - jnp.sqrt(1 - g) * x0, atol=1e-6
  )


# ---------------------------------------------------------------------------
# Exact models of the one-point data set {C}: every loss is zero and every
# denoiser returns C, which checks the wiring of noise levels, inputs and targets.


def _oracle(obj, v=None):
  cfg = obj.config
  if cfg.objective == 'chen':

    def apply(
      params, x, noise_level, label=None, self_cond=None, augment=None, train=False, rng=None
    ):
      g = (noise_level / 1000.0).reshape(-1, 1, 1, 1)
      b = cfg.scale
      x_t = x * jnp.sqrt((b**2 - 1) * g + 1) if cfg.normalize == 'analytic' else x
      x0 = jnp.full_like(x, b * C)
      eps = (x_t - jnp.sqrt(g) * x0) / jnp.sqrt(1 - g)
      out = {'eps': eps, 'x0': x0, 'v': jnp.sqrt(g) * eps - jnp.sqrt(1 - g) * x0}
      return out[cfg.prediction] * params['w'], None

  elif cfg.is_discrete:

    def apply(
      params, x, noise_level, label=None, self_cond=None, augment=None, train=False, rng=None
    ):
      # The model is fed t * 1000 / T (rescale_timesteps): undo it to find its level.
      t = noise_level * (cfg.num_timesteps / 1000.0) if cfg.rescale_timesteps else noise_level
      sigma = parameterization.timestep_to_edm_sigma(t, obj.schedule)
      abar = (1.0 / (1.0 + sigma**2)).reshape(-1, 1, 1, 1)
      x0 = jnp.full_like(x, C)
      eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)
      out = {'eps': eps, 'x0': x0, 'v': jnp.sqrt(abar) * eps - jnp.sqrt(1 - abar) * x0}
      out = out[cfg.prediction] * params['w']
      if cfg.learn_variance:
        out = jnp.concatenate([out, jnp.full_like(x, v)], axis=-1)
      return out, None

  else:  # edm

    def apply(
      params, x, noise_level, label=None, self_cond=None, augment=None, train=False, rng=None
    ):
      sigma = jnp.exp(noise_level / 250.0).reshape(-1, 1, 1, 1)
      c_skip, c_out, c_in, _ = parameterization.edm_preconditioning(sigma, cfg.sigma_data)
      return (C - c_skip * x / c_in) / c_out * params['w'], None

  return apply


ORACLE_CASES = [
  dict(
    objective='chen', prediction='eps', normalize='none', self_cond_rate=0.9, label_drop_prob=0.1
  ),
  dict(objective='chen', prediction='x0', normalize='analytic', scale=0.5),
  dict(
    objective='chen',
    prediction='v',
    normalize='analytic',
    scale=2.0,
    train_schedule='sigmoid',
    schedule_start=-3.0,
    schedule_end=3.0,
  ),
  dict(objective='ddpm', prediction='eps', num_timesteps=50),
  dict(
    objective='iddpm',
    prediction='v',
    num_timesteps=50,
    beta_schedule='cosine',
    learn_variance=True,
    loss='hybrid',
  ),
  dict(objective='edm'),
]


@pytest.mark.parametrize('case', ORACLE_CASES, ids=lambda c: '-'.join(map(str, c.values())))
def test_exact_model_zero_loss_exact_denoiser_jit_grad_vmap(case):
  """Also: the loss jits once (no retrace on new values), grads and vmaps over rngs."""
  obj = create_objective(_cfg(**case))
  oracle = _oracle(obj, v=0.3)
  traces = []

  def apply(*args, **kwargs):
    traces.append(1)
    return oracle(*args, **kwargs)

  batch = {'image': jnp.full((64, 2, 2, 1), C), 'label': jnp.arange(64, dtype=jnp.int32) % 10}
  if obj.config.is_discrete:  # the levels a discrete model knows
    sigmas = jnp.asarray(obj.schedule.edm_sigmas[[0, 10, 30, 49]], jnp.float32)
  else:
    sigmas = jnp.array([0.05, 0.5, 3.0, 20.0])

  def loss_fn(params, rng, state):
    loss, metrics, state = obj.loss(apply, params, batch, rng, state)
    return loss, (metrics, state)

  @jax.jit
  def run(params, rng, state):
    (loss, (metrics, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rng, state)
    vmapped = jax.vmap(lambda r: loss_fn(params, r, state)[1][0]['loss_per_example'])(
      jax.random.split(rng, 2)
    )
    denoise, _ = obj.denoiser(apply, params, clip_x0=False, x_shape=(1, 2, 2, 1))
    x = C + sigmas.reshape(4, 1, 1, 1) * jax.random.normal(jax.random.key(4), (4, 2, 2, 1))
    x0_hat = jax.vmap(lambda xi, s: denoise(xi[None], s)[0])(x, sigmas)
    return loss, metrics, grads, vmapped, x0_hat, state

  state = obj.init_state()
  loss, metrics, grads, vmapped, x0_hat, state = run(
    {'w': jnp.float32(1.0)}, jax.random.key(3), state
  )
  simple = metrics.get('mse', metrics['loss_per_example'])
  assert float(jnp.max(simple)) < 1e-4
  noise_t = np.asarray(metrics['noise_t'])
  assert noise_t.shape == (64,) and np.all((noise_t >= 0) & (noise_t <= 1))
  if case['objective'] != 'iddpm':
    # (For the hybrid loss the remaining term is the variance's L_vlb, which is > 0.)
    assert float(loss) < 1e-3
  tol = 2e-2 if case.get('prediction') == 'eps' else 1e-4
  np.testing.assert_allclose(np.asarray(x0_hat), C, atol=tol)
  assert vmapped.shape == (2, 64) and np.all(np.isfinite(np.asarray(vmapped)))
  # A wrong model has a clearly positive loss, a nonzero gradient and no retrace.
  n_traces = len(traces)
  _, bad, bad_grads, _, _, _ = run({'w': jnp.float32(1.3)}, jax.random.key(5), state)
  assert len(traces) == n_traces
  bad = bad.get('mse', bad['loss_per_example'])
  assert float(jnp.mean(bad)) > 1e-4 and float(jnp.mean(bad)) > 1e3 * float(jnp.mean(simple))
  assert np.isfinite(float(grads['w'])) and abs(float(bad_grads['w'])) > 0


@pytest.mark.parametrize('rescale', [True, False])
def test_discrete_model_is_fed_rescaled_timesteps(rescale):
  """Improved DDPM's rescale_timesteps: a T = 4000 model sees t * 1000 / T in training and,
  over a respaced chain, the original indices S_i rescaled by the original T."""
  T = 4000
  obj = create_objective(
    _cfg(objective='iddpm', num_timesteps=T, beta_schedule='cosine', rescale_timesteps=rescale)
  )
  fed = []

  def apply(params, x, noise_level, **_):
    jax.debug.callback(lambda t: fed.append(np.asarray(t)), noise_level)
    return jnp.zeros_like(x), None

  per_step = np.float32(1000.0 / T) if rescale else np.float32(1.0)
  _, metrics, _ = obj.loss(apply, {}, {'image': jnp.zeros((256, 2, 2, 1))}, jax.random.key(1), {})
  jax.effects_barrier()
  index = np.round(np.asarray(metrics['noise_t'], np.float64) * T - 1.0).astype(np.float32)
  assert index.max() > 1000  # the draws reach past 1000, where rescaling matters
  np.testing.assert_array_equal(fed[-1], index * per_step)
  for sampler in ('ddpm', 'ddim'):
    fed.clear()
    noise = jax.random.normal(jax.random.key(2), (2, 2, 2, 1))
    settings = samplers.SampleSettings(sampler=sampler, num_steps=10)
    samplers.sample(obj, apply, {}, noise, None, jax.random.key(3), settings)
    jax.effects_barrier()
    want = schedules_lib.space_timesteps(T, 10).astype(np.float32) * per_step  # [10]
    np.testing.assert_array_equal(np.unique(np.concatenate(fed)), want)


# ---------------------------------------------------------------------------
# EDM and NCSN.


def test_edm_effective_target_has_unit_variance():
  sd, n = 0.5, 200_000
  k1, k2 = jax.random.split(jax.random.key(4))
  y = sd * jax.random.normal(k1, (n,))
  z = jax.random.normal(k2, (n,))
  for sigma in [0.002, 0.1, 0.5, 2.0, 80.0]:
    target = effective_target(y, sigma * z, jnp.full((n,), sigma), sd)
    var = float(jnp.var(target.astype(jnp.float32)))
    assert abs(var - 1.0) < 6 * math.sqrt(2 / n), (sigma, var)
  # lambda(sigma) c_out^2 = 1, so the weighted D-loss equals the plain F-loss.
  s = jnp.array([0.01, 0.3, 7.0])
  _, c_out, _, _ = parameterization.edm_preconditioning(s, sd)
  np.testing.assert_allclose(parameterization.edm_loss_weight(s, sd) * c_out**2, 1.0, rtol=1e-5)


def test_edm_sigma_distribution_is_log_normal():
  obj = create_objective(_cfg(objective='edm'))
  log_sigma = np.log(np.asarray(obj.sample_sigma(jax.random.key(5), 20_000), np.float64))
  n = log_sigma.size
  assert abs(log_sigma.mean() + 1.2) < 5 * 1.2 / math.sqrt(n)
  assert abs(log_sigma.std() - 1.2) < 5 * 1.2 / math.sqrt(2 * n)


@pytest.mark.parametrize(
  'data_range,reduction', [('unit', 'sum'), ('symmetric', 'mean'), ('unit', 'mean')]
)
def test_ncsn_loss_is_minimized_by_the_true_score(data_range, reduction):
  """Gaussian data: in the network's range N(mu, s_n^2), the score of x~ at level sigma
  is -(x~ - mu) / (s_n^2 + sigma^2), and the loss there has a closed form."""
  m, s, sigma, b = 0.2, 0.6, 0.8, 4096
  obj = create_objective(
    _cfg(
      objective='ncsn',
      sigma_max=sigma,
      sigma_min=0.1,
      num_levels=1,
      data_range=data_range,
      ncsn_loss_reduction=reduction,
    )
  )
  a, c = {'unit': (0.5, 0.5), 'symmetric': (1.0, 0.0)}[data_range]  # x_net = a x + c
  mu, s_n = a * m + c, a * s
  batch = {'image': m + s * jax.random.normal(jax.random.key(6), (b, 2, 2, 1))}
  dim = 4

  def apply(params, x, noise_level, **_):
    return params['theta'] * (x - mu), None  # F = sigma * score is affine for Gaussian data

  def loss(theta):
    l, metrics, _ = obj.loss(apply, {'theta': theta}, batch, jax.random.key(7), {})
    return l, metrics['loss_per_example']

  theta_star = -sigma / (s_n**2 + sigma**2)  # F* = sigma * score
  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (value, per_ex), grad = value_and_grad(jnp.float32(theta_star))
  se = float(jnp.std(per_ex)) / math.sqrt(b)
  # 1/2 sigma^2 ||s + z / sigma||^2 per dimension is s_n^2 / (s_n^2 + sigma^2) / 2 at the
  # optimum; the reference sums it over the D dimensions.
  want = 0.5 * s_n**2 / (s_n**2 + sigma**2) * (dim if reduction == 'sum' else 1)
  assert abs(float(value) - want) < 5 * se
  # The gradient at theta* is zero up to Monte Carlo noise; moving away raises the loss.
  x_sq = s_n**2 + sigma**2
  scale = dim if reduction == 'sum' else 1
  assert abs(float(grad)) < scale * (5 * math.sqrt(x_sq / (b * 4)) + 1e-3)
  for d in (-0.3, 0.3):
    assert float(value_and_grad(jnp.float32(theta_star + d))[0][0]) > float(value) + 0.01 * scale


def test_cifar10_ncsnv2_ladder_is_the_papers_relative_to_the_data():
  """Technique 1 and 4 on the data range the network sees: the paper's sigma_1 = 50 is
  50 / sqrt(3072) of the largest distance between [0, 1] images (all 0 vs all 1), and
  eps = 6.2e-6 is Technique 4's for sigma_L = 0.01, T = 5 on that range."""
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'cifar10_ncsnv2.py')
  spec = importlib.util.spec_from_file_location('cifar10_ncsnv2', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  obj = create_objective(config.diffusion, config.model)
  d = config.data.image_size**2 * config.data.num_channels
  # Pipeline images in [-1, 1]: the two extremes and random ones in between.
  rng = np.random.default_rng(0)
  shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  images = np.concatenate(
    [-np.ones((1, *shape)), np.ones((1, *shape)), rng.uniform(-1, 1, (6, *shape))]
  ).astype(np.float32)
  widest = float(schedules_lib.ncsn_sigma_max_from_data(obj.to_network(jnp.asarray(images))))
  np.testing.assert_allclose(widest, math.sqrt(d), rtol=1e-4)  # sqrt(D) x the range of [0, 1]
  sigmas = np.asarray(obj.sigmas, np.float64)
  np.testing.assert_allclose(sigmas[0] / widest, 50.0 / math.sqrt(3072), rtol=1e-4)
  np.testing.assert_allclose(sigmas[-1] / widest, 0.01 / math.sqrt(3072), rtol=1e-4)
  # Technique 4 in the network's units gives the configured eps (paper: 6.2e-6).
  ratio = schedules_lib.ncsn_sigma_ratio(float(sigmas[0]), float(sigmas[-1]), len(sigmas))
  eps = schedules_lib.ncsn_solve_step_size(ratio, float(sigmas[-1]), config.sample.n_steps_each)
  assert config.sample.step_lr == pytest.approx(eps, rel=0.01)
  # The pipeline-space chain the sampler runs is the same ladder: sigma x2, eps x4.
  assert obj.data_scale == 0.5
  # Fed [-1, 1] data ('symmetric') the same sigmas would be half as large relative to it.
  sym = create_objective(dataclasses.replace(obj.config, data_range='symmetric'))
  widest_sym = float(schedules_lib.ncsn_sigma_max_from_data(sym.to_network(jnp.asarray(images))))
  assert sigmas[0] / widest_sym == pytest.approx(0.5 * 50.0 / math.sqrt(3072), rel=1e-4)


# ---------------------------------------------------------------------------
# Self-conditioning and label dropout.


def _sc_model(
  params, x, noise_level, label=None, self_cond=None, augment=None, train=False, rng=None
):
  """pred = w x + self_cond; carry = w x + 1 (so a zeroed carry is visible)."""
  sc = jnp.zeros_like(x) if self_cond is None else self_cond
  pred = params['w'] * x + sc
  return pred, params['w'] * x + 1.0


def test_self_conditioning_coin_and_stop_gradient():
  x = jax.random.normal(jax.random.key(8), (2000, 2, 2, 1))
  params = {'w': jnp.float32(0.7)}

  def run(params):
    return self_conditioning.apply_with_self_cond(
      _sc_model, params, x, jnp.zeros((2000,)), rate=0.9, rng=jax.random.key(9), train=True
    )

  pred, _, coin = jax.jit(run)(params)
  coin = np.asarray(coin)
  assert abs(coin.mean() - 0.9) < 5 * math.sqrt(0.09 / 2000)
  first = 0.7 * np.asarray(x) + 1.0
  expected = 0.7 * np.asarray(x) + np.where(coin[:, None, None, None], first, 0.0)
  np.testing.assert_allclose(np.asarray(pred), expected, rtol=1e-5, atol=1e-5)
  # d/dw mean(pred) = mean(x): the first pass (whose carry also depends on w) adds nothing.
  grad = jax.jit(jax.grad(lambda p: jnp.mean(run(p)[0])))(params)['w']
  np.testing.assert_allclose(float(grad), float(jnp.mean(x)), rtol=1e-4, atol=1e-6)


def test_label_dropout_rate():
  label = jnp.arange(10_000, dtype=jnp.int32) % 10
  dropped = np.asarray(self_conditioning.drop_labels(label, jax.random.key(10), 0.1))
  is_null = dropped == -1
  assert abs(is_null.mean() - 0.1) < 5 * math.sqrt(0.09 / 10_000)
  np.testing.assert_array_equal(dropped[~is_null], np.asarray(label)[~is_null])


def test_guided_stateful_denoiser():
  """CFG on x0 with separate carries for the two branches."""
  obj = create_objective(_cfg(objective='edm', self_cond_rate=0.5))
  label = jnp.array([3, -1, 5], jnp.int32)

  def apply(params, x, noise_level, label=None, self_cond=None, **_):
    lab = label.astype(x.dtype).reshape(-1, 1, 1, 1)
    sc = jnp.zeros_like(x) if self_cond is None else self_cond  # None means zeros
    return x + lab + sc, 2.0 * sc + 1.0

  x = jnp.ones((3, 2, 2, 1))
  w = 2.0
  denoise, state = obj.denoiser(apply, {}, label, guidance=w, x_shape=x.shape, clip_x0=False)
  out1, state = denoise(x, jnp.float32(1.0), state)
  out2, state = denoise(x, jnp.float32(1.0), state)
  c_skip, c_out, c_in, _ = parameterization.edm_preconditioning(1.0, 0.5)

  def d(lab, carry):
    return c_skip * x + c_out * (c_in * x + lab.reshape(-1, 1, 1, 1) + carry)

  null = jnp.full_like(label, -1).astype(jnp.float32)
  lab = label.astype(jnp.float32)
  np.testing.assert_allclose(out1, (1 + w) * d(lab, 0.0) - w * d(null, 0.0), rtol=1e-5)
  # After one call each branch's carry is 1 (2 * 0 + 1).
  np.testing.assert_allclose(out2, (1 + w) * d(lab, 1.0) - w * d(null, 1.0), rtol=1e-5)
  np.testing.assert_allclose(state[0], 3.0)
  with pytest.raises(ValueError, match='x_shape'):
    obj.denoiser(apply, {}, label, guidance=w)
  with pytest.raises(ValueError, match='labels'):
    obj.denoiser(apply, {}, None, guidance=1.0, x_shape=x.shape)


# ---------------------------------------------------------------------------
# Sampling through the samplers package.


@pytest.mark.parametrize(
  'case,sampler',
  [
    (dict(objective='chen', normalize='analytic', prediction='v'), 'default'),
    (dict(objective='iddpm', num_timesteps=50, learn_variance=True, loss='hybrid'), 'default'),
    (dict(objective='edm'), 'default'),
    (dict(objective='ddpm', num_timesteps=50), 'chen_ddim'),
  ],
  ids=['chen', 'iddpm', 'edm', 'ddpm-chen_ddim'],
)
def test_sample_recovers_the_one_point_data_set(case, sampler):
  obj = create_objective(_cfg(**case))
  apply = _oracle(obj, v=0.0)
  settings = samplers.SampleSettings(sampler=sampler, num_steps=8, clip_x0=True)
  noise = jax.random.normal(jax.random.key(11), (2, 4, 4, 1))
  out = jax.jit(lambda n, r: samplers.sample(obj, apply, {'w': 1.0}, n, None, r, settings))(
    noise, jax.random.key(12)
  )
  assert out.shape == noise.shape
  np.testing.assert_allclose(np.asarray(out), C, atol=2e-3)


def test_ncsn_sample_runs():
  obj = create_objective(_cfg(objective='ncsn', sigma_max=1.0, sigma_min=0.05, num_levels=5))
  apply = lambda params, x, noise_level, **_: (-0.5 * x, None)
  noise = jax.random.normal(jax.random.key(13), (2, 4, 4, 1))
  settings = samplers.SampleSettings(n_steps_each=2)
  out = samplers.sample(obj, apply, {}, noise, None, jax.random.key(14), settings)
  assert out.shape == noise.shape and np.all(np.abs(np.asarray(out)) <= 1.0)


# ---------------------------------------------------------------------------
# Config errors.


def _default_config() -> ml_collections.ConfigDict:
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'default.py')
  spec = importlib.util.spec_from_file_location('default_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize(
  'overrides,match',
  [
    (dict(objective='foo'), r"config.diffusion.objective='foo' is not one of chen, ddpm"),
    (dict(train_schedule='exp'), 'config.diffusion.train_schedule'),
    (dict(prediction='score'), 'config.diffusion.prediction'),
    (dict(objective='ddpm', loss='l1'), 'config.diffusion.loss'),
    (dict(objective='ddpm', beta_schedule='quad'), 'config.diffusion.beta_schedule'),
    (dict(objective='iddpm', loss='hybrid'), 'learn_variance'),
    (dict(objective='edm', loss='vlb'), 'config.diffusion.loss'),
    (dict(self_cond_rate=1.5), 'config.diffusion.self_cond_rate'),
    (dict(scale=0.0), 'config.diffusion.scale'),
    (dict(schedule_start=1.0, schedule_end=0.0, train_schedule='cosine'), 'schedule_start'),
    (dict(objective='ncsn', sigma_min=60.0), 'config.diffusion.sigma_max'),
    (dict(objective='edm', importance_sampling=True), 'importance_sampling'),
    (
      dict(normalise='none'),
      'normalise is not a known key; did you mean config.diffusion.normalize',
    ),
    (dict(objective='ncsn', data_range='pixels'), 'config.diffusion.data_range'),
    (dict(objective='ncsn', ncsn_loss_reduction='avg'), 'config.diffusion.ncsn_loss_reduction'),
    (dict(objective='ddpm', num_timesteps=10), 'config.diffusion.num_timesteps=10'),
  ],
)
def test_config_errors_name_the_key(overrides, match):
  cfg = _default_config()
  diffusion = ml_collections.ConfigDict(cfg.diffusion.to_dict())
  for k, v in overrides.items():
    diffusion[k] = v
  with pytest.raises(ValueError, match=match):
    create_objective(diffusion, cfg.model)


def test_rescale_timesteps_must_be_a_bool():
  with pytest.raises(ValueError, match='config.diffusion.rescale_timesteps'):
    DiffusionConfig(objective='ddpm', rescale_timesteps='yes')


def test_default_config_builds_every_objective():
  cfg = _default_config()
  for name in ('chen', 'ddpm', 'iddpm', 'edm', 'ncsn'):
    cfg.diffusion.objective = name
    assert create_objective(cfg.diffusion, cfg.model).config.objective == name
  with pytest.raises(ValueError, match='config.sample.sampler'):
    from diffusion_jax.objectives import SampleSettings

    SampleSettings.from_config(dict(sampler='nope'))
