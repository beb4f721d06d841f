"""Tests of the multistep samplers (samplers/multistep.py): LMS and DPM-Solver++ 2M / 3M / SDE.

Each sampler is checked against an independent float64 numpy transcription of its
reference (k-diffusion's sample_lms / sample_dpmpp_2m / sample_dpmpp_2m_sde /
sample_dpmpp_3m_sde; diffusers' DPMSolverMultistepScheduler.step in VP space) on the exact
mixture denoiser, the stochastic ones with the same draws through noise_fn.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mixture_reference import MIXTURE, NUM, assert_matches_mixture, np_denoise
from numpy.polynomial import Polynomial

from diffusion_jax import samplers, schedules
from diffusion_jax.samplers import multistep, stepping

BATCH = 64
LINEAR = schedules.DiscreteSchedule.from_name('linear', 1000)

# ---------------------------------------------------------------------------
# float64 transcriptions of the references.


def _k_lms(x, sigmas, order=4):
  """k-diffusion sample_lms; the Lagrange integrals by exact polynomial antiderivatives."""
  s, ds = np.asarray(sigmas, np.float64), []
  for i in range(len(s) - 1):
    ds = (ds + [(x - np_denoise(x, s[i])) / s[i]])[-order:]
    p = min(i + 1, order)
    step = 0.0
    for j in range(p):
      poly = Polynomial([1.0])
      for k in range(p):
        if k != j:
          poly = poly * Polynomial([-s[i - k], 1.0]) / (s[i - j] - s[i - k])
      prim = poly.integ()
      step = step + (prim(s[i + 1]) - prim(s[i])) * ds[-1 - j]
    x = x + step
  return x


def _k_dpmpp_2m(x, sigmas):
  """k-diffusion sample_dpmpp_2m."""
  s = np.asarray(sigmas, np.float64)
  t_fn = lambda v: -np.log(v) if v > 0 else np.inf
  old = None
  for i in range(len(s) - 1):
    m = np_denoise(x, s[i])
    t, t_next = t_fn(s[i]), t_fn(s[i + 1])
    h = t_next - t
    if old is None or s[i + 1] == 0:
      x = (s[i + 1] / s[i]) * x - np.expm1(-h) * m
    else:
      r = (t - t_fn(s[i - 1])) / h
      x = (s[i + 1] / s[i]) * x - np.expm1(-h) * ((1 + 1 / (2 * r)) * m - old / (2 * r))
    old = m
  return x


def _k_dpmpp_2m_sde(x, sigmas, noise, eta=1.0, s_noise=1.0, solver_type='midpoint'):
  """k-diffusion sample_dpmpp_2m_sde; noise[i] is noise_sampler(sigma_i, sigma_{i+1})."""
  s = np.asarray(sigmas, np.float64)
  old, h_last = None, None
  for i in range(len(s) - 1):
    m = np_denoise(x, s[i])
    if s[i + 1] == 0:
      x = m
    else:
      h = np.log(s[i] / s[i + 1])
      eh = eta * h
      x = s[i + 1] / s[i] * np.exp(-eh) * x - np.expm1(-h - eh) * m
      if old is not None:
        r = h_last / h
        if solver_type == 'heun':
          x = x + (-np.expm1(-h - eh) / (-h - eh) + 1) / r * (m - old)
        else:
          x = x - 0.5 * np.expm1(-h - eh) / r * (m - old)
      if eta:
        x = x + noise[i] * s[i + 1] * np.sqrt(-np.expm1(-2 * eh)) * s_noise
      h_last = h
    old = m
  return x


def _k_dpmpp_3m_sde(x, sigmas, noise, eta=1.0, s_noise=1.0, d2_scale=1.0):
  """k-diffusion sample_dpmpp_3m_sde (d2_scale = 2: the Taylor-consistent D2 term)."""
  s = np.asarray(sigmas, np.float64)
  m1 = m2 = h1 = h2 = None
  for i in range(len(s) - 1):
    m = np_denoise(x, s[i])
    if s[i + 1] == 0:
      x = m
    else:
      h = np.log(s[i] / s[i + 1])
      he = h * (eta + 1)
      x = np.exp(-he) * x - np.expm1(-he) * m
      phi_2 = np.expm1(-he) / he + 1
      if h2 is not None:
        r0, r1 = h1 / h, h2 / h
        d1_0, d1_1 = (m - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        x = x + phi_2 * d1 - d2_scale * (phi_2 / he - 0.5) * d2
      elif h1 is not None:
        x = x + phi_2 * (m - m1) / (h1 / h)
      if eta:
        x = x + noise[i] * s[i + 1] * np.sqrt(-np.expm1(-2 * h * eta)) * s_noise
    m1, m2 = m, m1
    h1, h2 = (h if s[i + 1] > 0 else None), h1
  return x


def _diffusers_dpmpp(x, sigmas, order, lower_order_final=True, solver_type='midpoint'):
  """diffusers DPMSolverMultistepScheduler(dpmsolver++, prediction_type='sample').step.

  In VP space x_vp = alpha x (alpha = 1 / sqrt(1 + sigma^2)); the model sees x_vp / alpha.
  final_sigmas_type is 'zero' for a grid ending at 0, else 'sigma_min'. Returns x_vp / alpha
  at the last level.
  """
  s = np.asarray(sigmas, np.float64)
  n = len(s) - 1
  alpha = 1 / np.sqrt(s**2 + 1)
  sig_t = s * alpha
  with np.errstate(divide='ignore'):
    lam = np.log(alpha) - np.log(sig_t)
  sample, outs, lower_nums = alpha[0] * x, [], 0
  for i in range(n):
    low_final = i == n - 1 and ((lower_order_final and n < 15) or s[-1] == 0)
    low_second = i == n - 2 and lower_order_final and n < 15
    m0 = np_denoise(sample / alpha[i], s[i])
    outs.append(m0)
    h = lam[i + 1] - lam[i]
    first = sig_t[i + 1] / sig_t[i] * sample - alpha[i + 1] * np.expm1(-h) * m0
    if order == 1 or lower_nums < 1 or low_final:
      sample = first
    elif order == 2 or lower_nums < 2 or low_second:
      d1 = (m0 - outs[-2]) / ((lam[i] - lam[i - 1]) / h)
      if solver_type == 'midpoint':
        sample = first - 0.5 * alpha[i + 1] * np.expm1(-h) * d1
      else:
        sample = first + alpha[i + 1] * (np.expm1(-h) / h + 1.0) * d1
    else:
      r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
      d1_0, d1_1 = (m0 - outs[-2]) / r0, (outs[-2] - outs[-3]) / r1
      d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
      d2 = (d1_0 - d1_1) / (r0 + r1)
      sample = (
        first
        + alpha[i + 1] * ((np.exp(-h) - 1.0) / h + 1.0) * d1
        - alpha[i + 1] * ((np.exp(-h) - 1.0 + h) / h**2 - 0.5) * d2
      )
    lower_nums = min(lower_nums + 1, order)
  return sample / alpha[-1]


# ---------------------------------------------------------------------------
# Grids and inputs.


def _grids():
  """name -> f32 grid: zero- and positive-ended, N < 15 and N >= 15, every spacing."""
  return {
    'karras10': schedules.karras_sigmas(10, 0.002, 10.0),
    'karras20': schedules.karras_sigmas(20, 0.002, 10.0),
    'linspace10': schedules.discrete_sigmas(LINEAR, 10, 'linspace'),
    'leading10': schedules.discrete_sigmas(LINEAR, 10, 'leading'),
    'trailing20': schedules.discrete_sigmas(LINEAR, 20, 'trailing'),
    'linspace20': schedules.discrete_sigmas(LINEAR, 20, 'linspace'),
    'karras10_positive': schedules.karras_sigmas(10, 0.002, 10.0)[:-1],  # N = 9, ends at 0.002
    'leading10_positive': schedules.discrete_sigmas(LINEAR, 10, 'leading')[:-1],
  }


def _z(seed=0, n=BATCH):
  return np.asarray(jax.random.normal(jax.random.key(seed), (n, 2)), np.float64)


DETERMINISTIC = {
  'lms4': (multistep.lms, {}, lambda x, s: _k_lms(x, s, 4)),
  'lms2': (multistep.lms, {'order': 2}, lambda x, s: _k_lms(x, s, 2)),
  'lms1': (multistep.lms, {'order': 1}, lambda x, s: _k_lms(x, s, 1)),
  '2m': (multistep.dpmpp_2m, {}, _k_dpmpp_2m),
  '2m_diffusers': (
    multistep.dpmpp_2m,
    {'multistep_style': 'diffusers'},
    lambda x, s: _diffusers_dpmpp(x, s, 2),
  ),
  '2m_diffusers_no_lof': (
    multistep.dpmpp_2m,
    {'multistep_style': 'diffusers', 'lower_order_final': False},
    lambda x, s: _diffusers_dpmpp(x, s, 2, lower_order_final=False),
  ),
  '3m': (multistep.dpmpp_3m, {}, lambda x, s: _k_dpmpp_3m_sde(x, s, None, eta=0.0)),
  '3m_diffusers': (
    multistep.dpmpp_3m,
    {'multistep_style': 'diffusers'},
    lambda x, s: _diffusers_dpmpp(x, s, 3),
  ),
  '3m_diffusers_no_lof': (
    multistep.dpmpp_3m,
    {'multistep_style': 'diffusers', 'lower_order_final': False},
    lambda x, s: _diffusers_dpmpp(x, s, 3, lower_order_final=False),
  ),
}


@pytest.mark.parametrize('case', sorted(DETERMINISTIC))
def test_deterministic_samplers_match_float64_transcriptions(case):
  fn, kwargs, reference = DETERMINISTIC[case]
  # The grid is a jit argument (traced sigmas, traced final 0): one compile per length.
  run = jax.jit(lambda x, s: fn(MIXTURE.denoise, x, s, **kwargs))
  z = _z()
  for name, sig in _grids().items():
    x = z * float(sig[0])
    got = np.asarray(run(jnp.asarray(x, jnp.float32), sig))
    want = reference(x, np.asarray(sig, np.float64))
    assert np.all(np.isfinite(got)), name
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f'{case} on {name}')


def test_2m_styles_are_one_update_except_on_short_positive_grids():
  """k-diffusion's 2M and diffusers' midpoint 2M take the same steps on a grid ending at 0
  (both first order on the first step and the step to 0), for N < 15 and N >= 15; on a
  grid ending at sigma > 0 with N < 15 diffusers' lower_order_final makes the last step
  first order, k-diffusion's stays second order."""
  z = _z(1)
  runs = {
    style: jax.jit(
      lambda x, s, style=style: multistep.dpmpp_2m(MIXTURE.denoise, x, s, multistep_style=style)
    )
    for style in multistep.STYLES
  }
  for name, sig in _grids().items():
    x = jnp.asarray(z * float(sig[0]), jnp.float32)
    k, d = (np.asarray(runs[style](x, sig)) for style in multistep.STYLES)
    if name.endswith('positive'):
      assert np.abs(k - d).max() > 1e-4, name
      np.testing.assert_allclose(
        d, _diffusers_dpmpp(np.asarray(x, np.float64), np.asarray(sig, np.float64), 2), atol=1e-4
      )
    else:
      np.testing.assert_array_equal(k, d, err_msg=name)
  # In float64 the two references agree too (independent transcriptions).
  for sig in (_grids()['linspace10'], _grids()['trailing20']):
    s = np.asarray(sig, np.float64)
    np.testing.assert_allclose(
      _k_dpmpp_2m(z * s[0], s), _diffusers_dpmpp(z * s[0], s, 2), atol=1e-10
    )


def test_3m_styles_differ_in_warm_up_and_final_steps():
  """k-style 3M (3M SDE at eta = 0) and diffusers' 3M: the same third-order update, a
  different second-order warm-up weight (phi_2 vs midpoint) and diffusers' second-order
  step N - 2 when N < 15."""
  s = np.asarray(_grids()['linspace20'], np.float64)
  z = _z(2) * s[0]
  k, d = _k_dpmpp_3m_sde(z, s, None, eta=0.0), _diffusers_dpmpp(z, s, 3)
  assert np.abs(k - d).max() > 1e-7  # small: at high sigma D barely moves
  # With diffusers' own heun warm-up and N >= 15 the two are the same algorithm.
  np.testing.assert_allclose(k, _diffusers_dpmpp(z, s, 3, solver_type='heun'), atol=1e-10)
  # With N < 15 diffusers' step N - 2 is second order: they differ even with heun.
  short = np.asarray(_grids()['linspace10'], np.float64)
  zs = _z(2) * short[0]
  heun = _diffusers_dpmpp(zs, short, 3, solver_type='heun')
  assert np.abs(heun - _k_dpmpp_3m_sde(zs, short, None, eta=0.0)).max() > 1e-6
  # Without lower_order_final only the step to 0 is first order, as in k-diffusion.
  np.testing.assert_allclose(
    _diffusers_dpmpp(zs, short, 3, lower_order_final=False, solver_type='heun'),
    _k_dpmpp_3m_sde(zs, short, None, eta=0.0),
    atol=1e-10,
  )


# ---------------------------------------------------------------------------
# Stochastic samplers.

STOCHASTIC = {
  '2m_sde_midpoint': (multistep.dpmpp_2m_sde, {}, _k_dpmpp_2m_sde),
  '2m_sde_heun': (
    multistep.dpmpp_2m_sde,
    {'solver_type': 'heun'},
    lambda x, s, nz, eta, sn: _k_dpmpp_2m_sde(x, s, nz, eta, sn, 'heun'),
  ),
  '3m_sde': (multistep.dpmpp_3m_sde, {}, _k_dpmpp_3m_sde),
}


@pytest.mark.parametrize('case', sorted(STOCHASTIC))
def test_sde_samplers_replay_float64_transcriptions_draw_for_draw(case):
  fn, kwargs, reference = STOCHASTIC[case]

  @jax.jit
  def run(x, s, noise, eta, s_noise):
    noise_fn = lambda i, sigma, sigma_next: noise[i]
    return fn(MIXTURE.denoise, x, s, noise_fn=noise_fn, eta=eta, s_noise=s_noise, **kwargs)

  grids = _grids()
  for name in ('karras10', 'linspace20', 'karras10_positive'):
    sig = grids[name]
    n = sig.shape[0] - 1
    noise = np.asarray(jax.random.normal(jax.random.key(n), (n, BATCH, 2)), np.float64)
    x = _z(3) * float(sig[0])
    for eta, s_noise in ((1.0, 1.0), (0.5, 0.8)):
      got = np.asarray(
        run(jnp.asarray(x, jnp.float32), sig, jnp.asarray(noise, jnp.float32), eta, s_noise)
      )
      want = reference(x, np.asarray(sig, np.float64), noise, eta, s_noise)
      np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f'{case} {name} {eta}')


def test_sde_samplers_sample_the_mixture():
  sigmas = schedules.karras_sigmas(40, 0.002, 10.0)
  z = jax.random.normal(jax.random.key(4), (NUM, 2)) * sigmas[0]

  @jax.jit
  def run(z, key):
    return [
      multistep.dpmpp_2m_sde(MIXTURE.denoise, z, sigmas, rng=key),
      multistep.dpmpp_2m_sde(MIXTURE.denoise, z, sigmas, rng=key, solver_type='heun'),
      multistep.dpmpp_3m_sde(MIXTURE.denoise, z, sigmas, rng=key),
    ]

  for out in run(z, jax.random.key(5)):
    assert_matches_mixture(MIXTURE, out)


def test_eta_zero_sde_is_the_ode_sampler_and_traced_eta_does_not_recompile():
  sigmas = schedules.karras_sigmas(8, 0.002, 10.0)
  x = jnp.asarray(_z(6) * float(sigmas[0]), jnp.float32)
  traces = []

  @jax.jit
  def run(eta, s_noise, key):
    traces.append(1)
    return (
      multistep.dpmpp_2m_sde(MIXTURE.denoise, x, sigmas, eta=eta, s_noise=s_noise, rng=key),
      multistep.dpmpp_3m_sde(MIXTURE.denoise, x, sigmas, eta=eta, s_noise=s_noise, rng=key),
    )

  key = jax.random.key(7)
  outs = [
    run(jnp.float32(e), jnp.float32(sn), key)
    for e, sn in ((0.0, 1.0), (1.0, 1.0), (0.5, 1.0), (1.0, 0.5))
  ]
  assert len(traces) == 1
  ode = jax.jit(
    lambda: (
      multistep.dpmpp_2m(MIXTURE.denoise, x, sigmas),
      multistep.dpmpp_3m(MIXTURE.denoise, x, sigmas),
    )
  )()
  for got, want in zip(outs[0], ode):  # traced eta = 0: no noise reaches the sample
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  for a, b in ((0, 1), (1, 2), (1, 3)):  # each traced value reaches the sampler
    for u, v in zip(outs[a], outs[b]):
      assert not np.allclose(np.asarray(u), np.asarray(v))
  # A concrete eta = 0 draws nothing: no rng needed.
  np.testing.assert_allclose(
    np.asarray(multistep.dpmpp_3m_sde(MIXTURE.denoise, x, sigmas, eta=0.0)),
    np.asarray(ode[1]),
    atol=1e-5,
  )


# ---------------------------------------------------------------------------
# Convergence order on a Gaussian, whose ODE solution is closed form.


def test_convergence_order_vs_nfe_on_a_gaussian():
  """Error vs NFE against x(sigma) = mu + (x_T - mu) sqrt(s0^2 + sigma^2) / sqrt(s0^2 + sigma_T^2).

  2M is second order, LMS(4) close to fourth. The references' 3M (k-diffusion's 3M SDE at
  eta = 0 and diffusers' third-order update) is globally second order: its D2 term is
  half the Taylor coefficient (D2 = h^2 x''/2 enters as -phi_3 D2, where the exact
  exponential integrator has -phi_3 h^2 x''), so its local error is O(h^3); it is still
  more accurate than 2M. The float64 transcription with the Taylor-consistent 2 D2 is
  third order on the same problem, so the problem does resolve third order.
  """
  mu, std = np.array([0.3, -0.2]), np.array([0.5, 0.25])
  gauss = samplers.GaussianMixture([1.0], mu[None], std[None])
  steps = (10, 20, 40, 80)
  grids = [
    schedules.exponential_sigmas(n + 1, 0.05, 20.0)[:-1] for n in steps
  ]  # N = n, ends at 0.05
  z = _z(8, 256)

  @jax.jit
  def run():
    return {
      name: [fn(gauss.denoise, jnp.asarray(z, jnp.float32) * s[0], s) for s in grids]
      for name, fn in (
        ('2m', multistep.dpmpp_2m),
        ('3m', multistep.dpmpp_3m),
        ('lms', multistep.lms),
      )
    }

  def exact(s):
    return mu + (z * s[0] - mu) * np.sqrt(std**2 + s[-1] ** 2) / np.sqrt(std**2 + s[0] ** 2)

  rms = lambda a, b: np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2))
  outs = run()
  err = {
    k: np.array([rms(o, exact(np.asarray(s, np.float64))) for o, s in zip(v, grids)])
    for k, v in outs.items()
  }

  def slope(e):  # least-squares order over NFE 20..80
    return -np.polyfit(np.log(steps[1:]), np.log(e[1:]), 1)[0]

  assert 1.8 < slope(err['2m']) < 2.2, err['2m']
  assert 1.8 < slope(err['3m']) < 2.6, err['3m']
  assert 3.3 < slope(err['lms']) < 4.3, err['lms']
  assert np.all(err['3m'][1:] < err['2m'][1:]) and err['lms'][-1] < err['3m'][-1]
  # The Taylor-consistent D2 (float64) shows third order on the same grids.
  d_exact = lambda x, s: mu + std**2 / (std**2 + s**2) * (x - mu)
  fixed = []
  for s in grids:
    s = np.asarray(s, np.float64)
    fixed.append(rms(_dpmpp_3m_np(d_exact, z * s[0], s, d2_scale=2.0), exact(s)))
  assert 2.7 < slope(np.array(fixed)) < 3.8, fixed


def _dpmpp_3m_np(denoise, x, s, d2_scale):
  """3M (k-diffusion 3M SDE at eta = 0) on a given float64 denoiser, D2 term scaled."""
  m1 = m2 = h1 = h2 = None
  for i in range(len(s) - 1):
    m = denoise(x, s[i])
    h = np.log(s[i] / s[i + 1])
    x = np.exp(-h) * x - np.expm1(-h) * m
    phi_2 = np.expm1(-h) / h + 1
    if h2 is not None:
      r0, r1 = h1 / h, h2 / h
      d1_0, d1_1 = (m - m1) / r0, (m1 - m2) / r1
      d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
      x = x + phi_2 * d1 - d2_scale * (phi_2 / h - 0.5) * (d1_0 - d1_1) / (r0 + r1)
    elif h1 is not None:
      x = x + phi_2 * (m - m1) / (h1 / h)
    m1, m2, h1, h2 = m, m1, h, h1
  return x


# ---------------------------------------------------------------------------
# State carry, registry entries, errors.


def test_state_is_threaded_through_every_call_in_order():
  sigmas = schedules.karras_sigmas(5, 0.01, 3.0)
  x = jnp.asarray(_z(9, 4) * float(sigmas[0]), jnp.float32)
  for name, spec in multistep.FAST_SAMPLERS.items():
    calls = []

    def denoise(x, sigma, state, calls=calls):
      record = lambda s, k, calls=calls: calls.append((float(s), int(k)))
      jax.debug.callback(record, sigma, state, ordered=True)
      return MIXTURE.denoise(x, sigma), state + 1

    out = jax.jit(
      lambda x, fn=spec.fn, d=denoise: fn(
        d, x, sigmas, init_state=jnp.int32(0), rng=jax.random.key(0)
      )
    )(x)
    plain = jax.jit(lambda x, fn=spec.fn: fn(MIXTURE.denoise, x, sigmas, rng=jax.random.key(0)))(x)
    jax.block_until_ready(out)
    assert len(calls) == spec.nfe(5) == 5, name
    np.testing.assert_allclose([c[0] for c in calls], np.asarray(sigmas[:-1]), rtol=1e-6)
    assert [c[1] for c in calls] == list(range(5)), name
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), atol=1e-6)


def test_fast_sampler_entries():
  specs = multistep.FAST_SAMPLERS
  assert set(specs) == {'lms', 'dpmpp_2m', 'dpmpp_3m', 'dpmpp_2m_sde', 'dpmpp_3m_sde'}
  for name, spec in specs.items():
    assert set(spec.options) <= set(stepping.OPTION_KEYS)
    assert spec.stochastic == name.endswith('_sde')
    assert spec.nfe(7) == 7 and spec.nfe(12, **{k: None for k in spec.options}) == 12
  assert specs['lms'].options == ('order',)
  assert set(specs['dpmpp_2m'].options) == {'multistep_style', 'lower_order_final'}
  assert set(specs['dpmpp_2m_sde'].options) == {'eta', 's_noise', 'solver_type'}


@pytest.mark.parametrize(
  'fn,kwargs,needle',
  [
    (multistep.dpmpp_2m, {'multistep_style': 'torch'}, 'multistep_style'),
    (multistep.dpmpp_3m, {'lower_order_final': 'yes'}, 'lower_order_final'),
    (multistep.dpmpp_2m_sde, {'solver_type': 'rk4', 'rng': jax.random.key(0)}, 'solver_type'),
    (multistep.dpmpp_2m_sde, {'eta': -1.0, 'rng': jax.random.key(0)}, 'eta'),
    (multistep.dpmpp_3m_sde, {'s_noise': -0.5, 'rng': jax.random.key(0)}, 's_noise'),
    (multistep.dpmpp_3m_sde, {}, 'rng'),
    (multistep.lms, {'order': 0}, 'order'),
    (multistep.lms, {'order': 2.5}, 'order'),
  ],
)
def test_bad_options_raise_one_line_value_errors(fn, kwargs, needle):
  with pytest.raises(ValueError, match=needle) as info:
    fn(MIXTURE.denoise, jnp.zeros((2, 2)), schedules.karras_sigmas(4), **kwargs)
  assert '\n' not in str(info.value)
  with pytest.raises(ValueError, match='sigmas'):
    multistep.dpmpp_2m(MIXTURE.denoise, jnp.zeros((2, 2)), jnp.array([0.5, 1.0, 0.0]))
