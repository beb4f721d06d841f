"""UniPC and DEIS (samplers/unipc_multistep.py, deis_multistep.py) vs float64 transcriptions.

The transcriptions below follow diffusers 0.42.1's UniPCMultistepScheduler and
DEISMultistepScheduler step by step in their own VP form (x_vp = alpha x, alpha_t, sigma_t,
lambda = log alpha_t - log sigma_t), so matching them also checks that the alphas cancel
in the samplers' EDM form. Where diffusers' arithmetic breaks at sigma = 0 (UniPC bh1:
-inf * 0; orders above 1 there: division by r_k = 0) they take the first-order step's
limit, x_N = D(x_{N-1}), as the samplers do.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mixture_reference import MIXTURE, NUM, assert_matches_mixture, np_denoise

from diffusion_jax import samplers, schedules
from diffusion_jax.samplers import deis_multistep as deis
from diffusion_jax.samplers import unipc_multistep as unipc

TABLE = schedules.DiscreteSchedule.from_name('linear', 1000)
BATCH = 64


def _alpha_sigma(s):
  """diffusers `_sigma_to_alpha_sigma_t`: alpha_t = 1 / sqrt(s^2 + 1), sigma_t = s alpha_t."""
  a = 1.0 / np.sqrt(s**2 + 1.0)
  return a, s * a


def _lambda(s):
  if s == 0:
    return np.inf
  a, st = _alpha_sigma(s)
  return np.log(a) - np.log(st)


def _unipc_b(hh, p, variant):
  """diffusers' (h_phi_1, B(h), b_1..b_p) of `multistep_uni_*_bh_update`."""
  h_phi_1 = np.expm1(hh)
  b_h = hh if variant == 'bh1' else h_phi_1
  h_phi_k, factorial, b = h_phi_1 / hh - 1.0, 1, []
  for i in range(1, p + 1):
    b.append(h_phi_k * factorial / b_h)
    factorial *= i + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  return h_phi_1, b_h, np.array(b)


def unipc_reference(x, sigmas, order, variant, lower_order_final):
  """float64 UniPCMultistepScheduler (predict_x0, prediction 'sample') on np_denoise."""
  sig = np.asarray(sigmas, np.float64)
  n = len(sig) - 1
  x_vp = np.asarray(x, np.float64) * _alpha_sigma(sig[0])[0]
  outputs, last_sample, last_order, warm = [], None, 0, 0

  def terms(s0, t, p):
    h = _lambda(sig[t]) - _lambda(sig[s0])
    rks = [(_lambda(sig[s0 - k]) - _lambda(sig[s0])) / h for k in range(1, p)]
    d1s = [(outputs[-(k + 1)] - outputs[-1]) / rks[k - 1] for k in range(1, p)]
    h_phi_1, b_h, b = _unipc_b(-h, p, variant)
    big_r = np.stack([np.array(rks + [1.0]) ** k for k in range(p)])
    return h_phi_1, b_h, b, big_r, d1s

  for i in range(n):
    a_i = _alpha_sigma(sig[i])[0]
    m = np_denoise(x_vp / a_i, sig[i])
    if i > 0:  # corrector UniC-p over (i - 1 -> i), p = the last predictor's order
      p = last_order
      h_phi_1, b_h, b, big_r, d1s = terms(i - 1, i, p)
      rhos = np.array([0.5]) if p == 1 else np.linalg.solve(big_r, b)
      corr = sum(r * d for r, d in zip(rhos[:-1], d1s))
      a_t, s_t = _alpha_sigma(sig[i])
      s_s = _alpha_sigma(sig[i - 1])[1]
      x_vp = (
        s_t / s_s * last_sample
        - a_t * h_phi_1 * outputs[-1]
        - a_t * b_h * (corr + rhos[-1] * (m - outputs[-1]))
      )
    outputs = (outputs + [m])[-order:]
    p = min(order, n - i) if lower_order_final else order
    p = min(p, warm + 1)
    last_sample, last_order = x_vp, p
    if sig[i + 1] == 0:  # alpha_t = 1, sigma_t = 0: the first-order step's limit
      x_vp = outputs[-1]
    else:  # predictor UniP-p
      h_phi_1, b_h, b, big_r, d1s = terms(i, i + 1, p)
      if p == 1:
        pred = 0.0
      elif p == 2:
        pred = 0.5 * d1s[0]
      else:
        rhos = np.linalg.solve(big_r[:-1, :-1], b[:-1])
        pred = sum(r * d for r, d in zip(rhos, d1s))
      a_t, s_t = _alpha_sigma(sig[i + 1])
      s_s = _alpha_sigma(sig[i])[1]
      x_vp = s_t / s_s * x_vp - a_t * h_phi_1 * outputs[-1] - a_t * b_h * pred
    warm = min(warm + 1, order)
  return x_vp / _alpha_sigma(sig[-1])[0]


def deis_reference(x, sigmas, order, lower_order_final):
  """float64 DEISMultistepScheduler (algorithm 'deis', solver 'logrho') on np_denoise."""
  sig = np.asarray(sigmas, np.float64)
  n = len(sig) - 1
  x_vp = np.asarray(x, np.float64) * _alpha_sigma(sig[0])[0]
  eps_list, warm = [], 0
  log = np.log

  def ind2(t, b, c):
    return t * (-log(c) + log(t) - 1) / (log(b) - log(c))

  def ind3(t, b, c, d):
    num = t * (log(c) * (log(d) - log(t) + 1) - log(d) * log(t) + log(d) + log(t) ** 2)
    num = num + t * (-2 * log(t) + 2)
    return num / ((log(b) - log(c)) * (log(b) - log(d)))

  for i in range(n):
    a_s, s_s = _alpha_sigma(sig[i])
    x0 = np_denoise(x_vp / a_s, sig[i])
    eps_list = (eps_list + [(x_vp - a_s * x0) / s_s])[-order:]
    final = i == n - 1 and lower_order_final and n < 15
    second = i == n - 2 and lower_order_final and n < 15
    a_t, s_t = _alpha_sigma(sig[i + 1])
    e = eps_list[::-1]  # e[0] = eps_i, e[1] = eps_{i-1}, ...
    if sig[i + 1] == 0:  # the step to sigma = 0 as DDIM (diffusers' grids never reach 0)
      x_vp = x0
    elif order == 1 or warm < 1 or final:
      h = _lambda(sig[i + 1]) - _lambda(sig[i])
      x_vp = a_t / a_s * x_vp - s_t * (np.exp(h) - 1.0) * e[0]
    elif order == 2 or warm < 2 or second:
      rt, r0, r1 = s_t / a_t, sig[i], sig[i - 1]
      c0 = ind2(rt, r0, r1) - ind2(r0, r0, r1)
      c1 = ind2(rt, r1, r0) - ind2(r0, r1, r0)
      x_vp = a_t * (x_vp / a_s + c0 * e[0] + c1 * e[1])
    else:
      rt, r0, r1, r2 = s_t / a_t, sig[i], sig[i - 1], sig[i - 2]
      c0 = ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2)
      c1 = ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0)
      c2 = ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1)
      x_vp = a_t * (x_vp / a_s + c0 * e[0] + c1 * e[1] + c2 * e[2])
    warm = min(warm + 1, order)
  return x_vp / _alpha_sigma(sig[-1])[0]


def _t0_grid(n, spacing):
  """diffusers DEIS's grid: the sigmas at its timesteps, then sigma(t = 0) > 0."""
  t = schedules.discrete_timesteps(1000, n, spacing)
  return jnp.asarray(np.append(TABLE.edm_sigmas[t], TABLE.edm_sigmas[0]), jnp.float32)


GRIDS = {
  'linspace8_zero': lambda: schedules.discrete_sigmas(TABLE, 8, 'linspace'),
  'trailing16_zero': lambda: schedules.discrete_sigmas(TABLE, 16, 'trailing'),
  'leading11_t0': lambda: _t0_grid(11, 'leading'),
  'linspace16_t0': lambda: _t0_grid(16, 'linspace'),
}
UNIPC_CASES = [(o, v, True) for o in (1, 2, 3) for v in ('bh2', 'bh1')] + [
  (3, 'bh2', False),
  (2, 'bh1', False),
]
DEIS_CASES = [(1, True), (2, True), (3, True), (3, False), (2, False)]


@pytest.mark.parametrize('grid', ['linspace8_zero', 'trailing16_zero', 'leading11_t0'])
def test_unipc_matches_float64_diffusers_transcription(grid):
  sigmas = GRIDS[grid]()
  z = np.random.default_rng(0).normal(size=(BATCH, 2))

  @jax.jit
  def run(x):
    return [
      unipc.unipc(MIXTURE.denoise, x, sigmas, order=o, variant=v, lower_order_final=f)
      for o, v, f in UNIPC_CASES
    ]

  got = run(jnp.asarray(z, jnp.float32) * sigmas[0])
  sig64 = np.asarray(sigmas, np.float64)
  for (o, v, f), out in zip(UNIPC_CASES, got):
    want = unipc_reference(z * sig64[0], sig64, o, v, f)
    assert np.all(np.isfinite(np.asarray(out))), (o, v, f)
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-4, err_msg=str((grid, o, v, f)))


@pytest.mark.parametrize('grid', ['linspace8_zero', 'leading11_t0', 'linspace16_t0'])
def test_deis_matches_float64_diffusers_transcription(grid):
  sigmas = GRIDS[grid]()
  z = np.random.default_rng(1).normal(size=(BATCH, 2))

  @jax.jit
  def run(x):
    return [
      deis.deis(MIXTURE.denoise, x, sigmas, order=o, lower_order_final=f) for o, f in DEIS_CASES
    ]

  got = run(jnp.asarray(z, jnp.float32) * sigmas[0])
  sig64 = np.asarray(sigmas, np.float64)
  for (o, f), out in zip(DEIS_CASES, got):
    want = deis_reference(z * sig64[0], sig64, o, f)
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-4, err_msg=str((grid, o, f)))


def test_final_step_to_zero_lands_on_the_denoised_sample_with_traced_sigmas():
  """x_N = D(x_{N-1}; sigma_{N-1}), finite for every option (where diffusers' bh1 gives NaN
  and its lower_order_final=False steps inf), the same with the grid traced.

  D(x; sigma) = c (1 + sigma) ignores x, so x_N = c (1 + sigma_{N-1}) exactly; a step of
  order above 1 to sigma = 0 would extrapolate the outputs to another value.
  """
  sigmas = schedules.discrete_sigmas(TABLE, 6, 'trailing')
  x = jax.random.normal(jax.random.key(0), (8, 2)) * sigmas[0]
  c = jnp.array([0.3, -0.7])
  d = lambda x, sigma: jnp.broadcast_to(c * (1.0 + sigma), x.shape)
  runs = {
    'unipc_bh1': lambda s: unipc.unipc(d, x, s, variant='bh1'),
    'unipc_3': lambda s: unipc.unipc(d, x, s, order=3, lower_order_final=False),
    'deis_3': lambda s: deis.deis(d, x, s, order=3, lower_order_final=False),
  }
  traced = jax.jit(lambda s: {k: f(s) for k, f in runs.items()})(sigmas)
  concrete = jax.jit(lambda: {k: f(sigmas) for k, f in runs.items()})()
  want = np.broadcast_to(np.asarray(c) * (1.0 + float(sigmas[-2])), x.shape)
  for name in runs:
    np.testing.assert_allclose(traced[name], want, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(concrete[name], want, rtol=1e-6, err_msg=name)


def test_convergence_order_on_the_gaussian_closed_form():
  """Error vs NFE against the exact PF-ODE solution for Gaussian data N(mu, s^2):
  x(sigma) = mu + (x(sigma_0) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2). The grid
  ends at sigma_min > 0 and lower_order_final=False, so every step but the warm-up runs at
  full order."""
  mu, std = np.array([0.3, -0.2]), np.array([0.5, 0.25])
  gauss = samplers.GaussianMixture([1.0], mu[None], std[None])
  z = jax.random.normal(jax.random.key(2), (128, 2))
  steps = (10, 20, 40)
  configs = {
    'unipc1': (unipc.unipc, dict(order=1)),
    'unipc2': (unipc.unipc, dict(order=2)),
    'unipc3': (unipc.unipc, dict(order=3)),
    'unipc2_bh1': (unipc.unipc, dict(order=2, variant='bh1')),
    'deis1': (deis.deis, dict(order=1)),
    'deis2': (deis.deis, dict(order=2)),
    'deis3': (deis.deis, dict(order=3)),
  }
  grids = {n: schedules.karras_sigmas(n, 0.05, 20.0)[:-1] for n in steps}

  @jax.jit
  def run(z):
    return {
      (k, n): fn(gauss.denoise, z * grids[n][0], grids[n], lower_order_final=False, **kw)
      for k, (fn, kw) in configs.items()
      for n in steps
    }

  out = run(z)
  zn = np.asarray(z, np.float64)
  slopes, errors = {}, {}
  for k in configs:
    err = []
    for n in steps:
      s = np.asarray(grids[n], np.float64)
      exact = mu + (zn * s[0] - mu) * np.sqrt(std**2 + s[-1] ** 2) / np.sqrt(std**2 + s[0] ** 2)
      err.append(np.sqrt(np.mean((np.asarray(out[(k, n)], np.float64) - exact) ** 2)))
    errors[k] = np.array(err)
    slopes[k] = -np.polyfit(np.log(steps), np.log(err), 1)[0]
  # UniC raises UniP-p to order p + 1.
  assert 1.7 < slopes['unipc1'] < 2.6, slopes
  assert 2.5 < slopes['unipc2'] and 2.5 < slopes['unipc2_bh1'], slopes
  assert slopes['unipc3'] > 3.3, slopes
  # Higher order wins from NFE 20 on (at 10 steps UniPC-3 and UniPC-2 are on a par).
  assert np.all(errors['unipc3'][1:] < errors['unipc2'][1:])
  assert np.all(errors['unipc2'] < errors['unipc1'])
  assert 0.8 < slopes['deis1'] < 1.3, slopes
  assert 1.7 < slopes['deis2'] < 2.6, slopes
  assert slopes['deis3'] > 1.8, slopes  # pre-asymptotic at these NFE (about 2.2)
  assert np.all(errors['deis3'] < errors['deis2']) and np.all(errors['deis2'] < errors['deis1'])


def test_call_order_nfe_state_threading_and_no_retrace():
  calls, traces = [], []

  def denoise(x, sigma, state):
    jax.debug.callback(lambda s, c: calls.append((float(s), int(c))), sigma, state, ordered=True)
    return MIXTURE.denoise(x, sigma), state + 1

  def sample(x, sigmas):
    traces.append(1)
    return [
      spec.fn(denoise, x, sigmas, init_state=jnp.int32(0), order=3)
      for spec in (unipc.FAST_SAMPLERS['unipc'], deis.FAST_SAMPLERS['deis'])
    ]

  fn = jax.jit(sample)
  x = jnp.ones((2, 2))
  s = schedules.discrete_sigmas(TABLE, 7, 'linspace')
  jax.block_until_ready(fn(x, s))
  jax.effects_barrier()
  n = 7
  assert (
    len(calls) == 2 * n == unipc.FAST_SAMPLERS['unipc'].nfe(n) + deis.FAST_SAMPLERS['deis'].nfe(n)
  )
  for half in (calls[:n], calls[n:]):
    np.testing.assert_allclose([c[0] for c in half], np.asarray(s)[:-1], rtol=1e-6)
    assert [c[1] for c in half] == list(range(n))  # the state goes through every call
  out = fn(x, schedules.discrete_sigmas(TABLE, 7, 'trailing'))  # a new grid: same executable
  assert len(traces) == 1 and np.all(np.isfinite(np.asarray(out)))


def test_samples_match_the_mixture():
  # EDM's grid: its last level 0.002 is far below the components' stds, so the final
  # first-order step D(x; 0.002) does not shrink them (the linear table's sigma(t=39) would).
  sigmas = schedules.karras_sigmas(25, 0.002, 80.0)
  z = jax.random.normal(jax.random.key(3), (NUM, 2)) * sigmas[0]
  run = jax.jit(
    lambda z: (unipc.unipc(MIXTURE.denoise, z, sigmas), deis.deis(MIXTURE.denoise, z, sigmas))
  )
  for x in run(z):
    assert_matches_mixture(MIXTURE, x)


def test_fast_sampler_entries_and_bad_options():
  spec_u, spec_d = unipc.FAST_SAMPLERS['unipc'], deis.FAST_SAMPLERS['deis']
  assert spec_u.options == ('order', 'variant', 'lower_order_final') and not spec_u.stochastic
  assert spec_d.options == ('order', 'lower_order_final') and not spec_d.stochastic
  assert spec_u.nfe(12, order=3, variant='bh1') == 12 == spec_d.nfe(12, order=1)
  d = MIXTURE.denoise
  x = jnp.zeros((2, 2))
  s = schedules.karras_sigmas(4)
  for call, needle in [
    (lambda: unipc.unipc(d, x, s, order=4), 'unipc: order=4'),
    (lambda: unipc.unipc(d, x, s, variant='bh3'), "unipc: variant='bh3'"),
    (lambda: deis.deis(d, x, s, order=0), 'deis: order=0'),
    (lambda: deis.deis(d, x, s, lower_order_final='yes'), 'deis: lower_order_final'),
  ]:
    with pytest.raises(ValueError, match=needle) as info:
      call()
    assert '\n' not in str(info.value)
  with pytest.raises(ValueError, match='unipc: sigmas must be strictly decreasing'):
    unipc.unipc(d, x, s[::-1])
