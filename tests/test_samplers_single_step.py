"""k-diffusion's single-step samplers and DPM-Solver (fast / adaptive) vs float64 transcriptions.

The numpy functions below transcribe k-diffusion's `sample_euler`, `sample_heun`,
`sample_dpm_2`, `sample_euler_ancestral`, `sample_dpm_2_ancestral`,
`sample_dpmpp_2s_ancestral`, `sample_dpmpp_sde` and `DPMSolver.dpm_solver_fast` /
`dpm_solver_adaptive` (with `PIDStepSizeController`) line by line, in float64 on the exact
mixture denoiser; the JAX samplers replay their draws through noise_fn. (The comparison
with k-diffusion itself is experiments/parity/single_step.py.)
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mixture_reference import MIXTURE, NUM, assert_matches_mixture, np_denoise

from diffusion_jax import samplers, schedules
from diffusion_jax.samplers import dpm_solver, single_step

SIGMA_MIN, SIGMA_MAX = 0.002, 10.0
BATCH = 64
STEPS = 8
CHURN = dict(s_churn=2.0, s_tmin=0.05, s_tmax=5.0, s_noise=1.003)

# ---------------------------------------------------------------------------
# float64 transcriptions of k-diffusion.


def np_ancestral_step(sigma_from, sigma_to, eta):
  if not eta:
    return sigma_to, 0.0
  up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
  return (sigma_to**2 - up**2) ** 0.5, up


def np_churned(method, x, sig, draws=None, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0):
  """sample_euler / sample_heun / sample_dpm_2 (draws[i]: step i's randn_like)."""
  n = len(sig) - 1
  for i in range(n):
    gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sig[i] <= s_tmax else 0.0
    sh = sig[i] * (gamma + 1)
    if gamma > 0:
      x = x + draws[i] * s_noise * (sh**2 - sig[i] ** 2) ** 0.5
    d = (x - np_denoise(x, sh)) / sh
    dt = sig[i + 1] - sh
    if method == 'euler' or sig[i + 1] == 0:
      x = x + d * dt
    elif method == 'heun':
      x_2 = x + d * dt
      d_2 = (x_2 - np_denoise(x_2, sig[i + 1])) / sig[i + 1]
      x = x + (d + d_2) / 2 * dt
    else:  # dpm_2
      mid = math.exp(math.log(sh) + 0.5 * (math.log(sig[i + 1]) - math.log(sh)))
      x_2 = x + d * (mid - sh)
      x = x + (x_2 - np_denoise(x_2, mid)) / mid * dt
  return x


def np_ancestral(method, x, sig, draws, eta=1.0, s_noise=1.0):
  """sample_euler_ancestral / sample_dpm_2_ancestral / sample_dpmpp_2s_ancestral."""
  for i in range(len(sig) - 1):
    s, sn = sig[i], sig[i + 1]
    den = np_denoise(x, s)
    sd, su = np_ancestral_step(s, sn, eta)
    d = (x - den) / s
    if method == 'euler_ancestral':
      x = x + d * (sd - s)
      if sn > 0:
        x = x + draws[i] * s_noise * su
    elif method == 'dpm_2_ancestral':
      if sd == 0:
        x = x + d * (sd - s)
      else:
        mid = math.exp(math.log(s) + 0.5 * (math.log(sd) - math.log(s)))
        x_2 = x + d * (mid - s)
        x = x + (x_2 - np_denoise(x_2, mid)) / mid * (sd - s)
        x = x + draws[i] * s_noise * su
    else:  # dpmpp_2s_ancestral
      if sd == 0:
        x = x + d * (sd - s)
      else:
        t, t_next = -math.log(s), -math.log(sd)
        h = t_next - t
        ts = t + 0.5 * h
        x_2 = (math.exp(-ts) / math.exp(-t)) * x - math.expm1(-h * 0.5) * den
        den_2 = np_denoise(x_2, math.exp(-ts))
        x = (math.exp(-t_next) / math.exp(-t)) * x - math.expm1(-h) * den_2
      if sn > 0:
        x = x + draws[i] * s_noise * su
  return x


def np_dpmpp_sde(x, sig, draws_1, draws_2, eta=1.0, s_noise=1.0, r=0.5):
  """sample_dpmpp_sde: draws_1[i] over (sigma_i, sigma_s), draws_2[i] over (sigma_i, sigma_i+1)."""
  sigma_fn, t_fn = lambda t: math.exp(-t), lambda s: -math.log(s)
  for i in range(len(sig) - 1):
    den = np_denoise(x, sig[i])
    if sig[i + 1] == 0:
      x = x + (x - den) / sig[i] * (sig[i + 1] - sig[i])
      continue
    t, t_next = t_fn(sig[i]), t_fn(sig[i + 1])
    h = t_next - t
    s = t + h * r
    fac = 1 / (2 * r)
    sd, su = np_ancestral_step(sigma_fn(t), sigma_fn(s), eta)
    s_ = t_fn(sd)
    x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - math.expm1(t - s_) * den
    x_2 = x_2 + draws_1[i] * s_noise * su
    den_2 = np_denoise(x_2, sigma_fn(s))
    sd, su = np_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta)
    t_next_ = t_fn(sd)
    den_d = (1 - fac) * den + fac * den_2
    x = (sigma_fn(t_next_) / sigma_fn(t)) * x - math.expm1(t - t_next_) * den_d
    x = x + draws_2[i] * s_noise * su
  return x


class NpDPMSolver:
  """k-diffusion's DPMSolver in float64 numpy; counts its denoiser calls."""

  def __init__(self, denoise=np_denoise):
    self.denoise, self.calls = denoise, 0

  def eps(self, x, t):
    self.calls += 1
    return (x - self.denoise(x, math.exp(-t))) / math.exp(-t)

  def step_1(self, x, t, tn, eps):
    return x - math.exp(-tn) * math.expm1(tn - t) * eps

  def step_2(self, x, t, tn, eps, r1=0.5):
    h = tn - t
    s1 = t + r1 * h
    u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
    eps_r1 = self.eps(u1, s1)
    x_2 = x - math.exp(-tn) * math.expm1(h) * eps
    return x_2 - math.exp(-tn) / (2 * r1) * math.expm1(h) * (eps_r1 - eps), eps_r1

  def step_3(self, x, t, tn, eps, eps_r1=None):
    r1, r2 = 1 / 3, 2 / 3
    h = tn - t
    s1, s2 = t + r1 * h, t + r2 * h
    if eps_r1 is None:
      eps_r1 = self.eps(x - math.exp(-s1) * math.expm1(r1 * h) * eps, s1)
    u2 = (
      x
      - math.exp(-s2) * math.expm1(r2 * h) * eps
      - math.exp(-s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps)
    )
    eps_r2 = self.eps(u2, s2)
    x_3 = x - math.exp(-tn) * math.expm1(h) * eps
    return x_3 - math.exp(-tn) / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)

  def target(self, t, tn, t_end, eta):
    if not eta:
      return tn, 0.0
    sd, _ = np_ancestral_step(math.exp(-t), math.exp(-tn), eta)
    tn_ = min(t_end, -math.log(sd)) if sd > 0 else t_end
    return tn_, (math.exp(-tn) ** 2 - math.exp(-tn_) ** 2) ** 0.5

  def fast(self, x, sigma_min, sigma_max, nfe, eta=0.0, s_noise=1.0, draws=None):
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    m = nfe // 3 + 1
    ts = np.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
      t, tn = ts[i], ts[i + 1]
      tn_, su = self.target(t, tn, t_end, eta)
      eps = self.eps(x, t)
      if order == 1:
        x = self.step_1(x, t, tn_, eps)
      elif order == 2:
        x = self.step_2(x, t, tn_, eps)[0]
      else:
        x = self.step_3(x, t, tn_, eps)
      if eta:
        x = x + su * s_noise * draws[i]
    return x

  def adaptive(
    self,
    x,
    sigma_min,
    sigma_max,
    order=3,
    rtol=0.05,
    atol=0.0078,
    h_init=0.05,
    pcoeff=0.0,
    icoeff=1.0,
    dcoeff=0.0,
    accept_safety=0.81,
    eta=0.0,
    s_noise=1.0,
    draws=None,
  ):
    s, t_end = -math.log(sigma_max), -math.log(sigma_min)
    x_prev = x
    k = 1.5 if eta else order
    b1, b2, b3 = (pcoeff + icoeff + dcoeff) / k, -(pcoeff + 2 * dcoeff) / k, dcoeff / k
    h, errs = h_init, []
    info = {'steps': 0, 'nfe': 0, 'n_accept': 0, 'n_reject': 0}
    while s < t_end - 1e-5:
      t = min(t_end, s + h)
      t_, su = self.target(s, t, t_end, eta)
      eps = self.eps(x, s)
      if order == 2:
        x_low = self.step_1(x, s, t_, eps)
        x_high = self.step_2(x, s, t_, eps)[0]
      else:
        x_low, eps_r1 = self.step_2(x, s, t_, eps, r1=1 / 3)
        x_high = self.step_3(x, s, t_, eps, eps_r1)
      delta = np.maximum(atol, rtol * np.maximum(np.abs(x_low), np.abs(x_prev)))
      error = np.linalg.norm((x_low - x_high) / delta) / x.size**0.5
      inv = 1 / (error + 1e-8)
      if not errs:
        errs = [inv, inv, inv]
      errs[0] = inv
      factor = errs[0] ** b1 * errs[1] ** b2 * errs[2] ** b3
      factor = 1 + math.atan(factor - 1)
      accept = factor >= accept_safety
      if accept:
        errs[2], errs[1] = errs[1], errs[0]
      h *= factor
      if accept:
        x_prev = x_low
        x = x_high + (su * s_noise * draws[info['n_accept']] if eta else 0.0)
        s = t
        info['n_accept'] += 1
      else:
        info['n_reject'] += 1
      info['nfe'] += order
      info['steps'] += 1
    return x, info


# ---------------------------------------------------------------------------
# Replays against the transcriptions.


def _table(draws):
  t = jnp.asarray(draws, jnp.float32)
  return lambda i, sigma, sigma_next: t[i]


def _sde_table(sig, first, second):
  sig = jnp.asarray(sig)
  t1, t2 = jnp.asarray(first, jnp.float32), jnp.asarray(second, jnp.float32)
  return lambda i, s, sn: jnp.where(sn == sig[i + 1], t2[i], t1[i])


CHURNED = [(m, opts) for m in ('euler', 'heun', 'dpm_2') for opts in ({}, CHURN)]
ANCESTRAL = [
  (m, eta, s_noise)
  for m in ('euler_ancestral', 'dpm_2_ancestral', 'dpmpp_2s_ancestral')
  for eta, s_noise in ((1.0, 1.0), (0.5, 0.9), (3.0, 1.0))  # eta 3: sigma_down = 0 mid-grid
]
SDE = [(1.0, 1.0, 0.5), (0.5, 0.9, 1 / 3)]
FAST = [(10, 0.0), (9, 0.0), (11, 0.5)]
ADAPTIVE = [
  dict(order=3),
  dict(order=2),
  dict(order=3, rtol=0.01, atol=0.001, pcoeff=0.1, icoeff=0.6, dcoeff=0.1),
  dict(order=3, eta=0.5, s_noise=0.9),
]


def test_samplers_replay_float64_transcriptions_of_k_diffusion():
  rng = np.random.default_rng(0)
  sig32 = schedules.karras_sigmas(STEPS, SIGMA_MIN, SIGMA_MAX)
  sig = np.asarray(sig32, np.float64)
  z = rng.normal(size=(BATCH, 2))
  draws = rng.normal(size=(4, STEPS + 12, BATCH, 2))
  big = rng.normal(size=(80, BATCH, 2))

  @jax.jit
  def run(x0, x_fast):
    out = {}
    for m, opts in CHURNED:
      fn = single_step.FAST_SAMPLERS[m].fn
      out[m, bool(opts)] = fn(MIXTURE.denoise, x0, sig32, noise_fn=_table(draws[0]), **opts)
    for m, eta, s_noise in ANCESTRAL:
      fn = single_step.FAST_SAMPLERS[m].fn
      out[m, eta] = fn(
        MIXTURE.denoise, x0, sig32, eta=eta, s_noise=s_noise, noise_fn=_table(draws[1])
      )
    for eta, s_noise, r in SDE:
      noise_fn = _sde_table(sig32, draws[2], draws[3])
      out['sde', eta] = single_step.dpmpp_sde(
        MIXTURE.denoise, x0, sig32, eta=eta, s_noise=s_noise, r=r, noise_fn=noise_fn
      )
    kw = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    for n, eta in FAST:
      out['fast', n] = dpm_solver.dpm_fast(
        MIXTURE.denoise, x_fast, n=n, eta=eta, noise_fn=_table(draws[0]), **kw
      )
    for j, opts in enumerate(ADAPTIVE):
      out['adaptive', j] = dpm_solver.dpm_adaptive(
        MIXTURE.denoise, x_fast, return_info=True, noise_fn=_table(big), **kw, **opts
      )
    return out

  got = jax.tree.map(np.asarray, run(jnp.asarray(z * sig[0], jnp.float32), jnp.asarray(z * 10.0)))
  x0 = z * sig[0]
  for m, opts in CHURNED:
    want = np_churned(m, x0, sig, draws[0], **opts)
    np.testing.assert_allclose(got[m, bool(opts)], want, atol=1e-4, err_msg=f'{m} {opts}')
  for m, eta, s_noise in ANCESTRAL:
    want = np_ancestral(m, x0, sig, draws[1], eta, s_noise)
    np.testing.assert_allclose(got[m, eta], want, atol=1e-4, err_msg=f'{m} eta={eta}')
  for eta, s_noise, r in SDE:
    want = np_dpmpp_sde(x0, sig, draws[2], draws[3], eta, s_noise, r)
    np.testing.assert_allclose(got['sde', eta], want, atol=1e-4, err_msg=f'dpmpp_sde eta={eta}')
  for n, eta in FAST:
    solver = NpDPMSolver()
    want = solver.fast(z * 10.0, SIGMA_MIN, SIGMA_MAX, n, eta=eta, draws=draws[0])
    assert solver.calls == n == dpm_solver.FAST_SAMPLERS['dpm_fast'].nfe(n)
    np.testing.assert_allclose(got['fast', n], want, atol=2e-4, err_msg=f'dpm_fast n={n}')
  for j, opts in enumerate(ADAPTIVE):
    solver = NpDPMSolver()
    want, info = solver.adaptive(z * 10.0, SIGMA_MIN, SIGMA_MAX, draws=big, **opts)
    x, got_info = got['adaptive', j]
    assert solver.calls == info['nfe']
    for key in ('nfe', 'n_accept', 'n_reject', 'steps'):
      assert int(got_info[key]) == info[key], (opts, key, got_info, info)
    assert bool(got_info['done'])
    np.testing.assert_allclose(x, want, atol=2e-4, err_msg=f'dpm_adaptive {opts}')


# ---------------------------------------------------------------------------
# Distributions with fresh noise (rng).


def test_stochastic_samplers_sample_the_mixture():
  z = jax.random.normal(jax.random.key(0), (NUM, 2))
  grid = lambda n: schedules.karras_sigmas(n, SIGMA_MIN, SIGMA_MAX)

  @jax.jit
  def run(z, key):
    keys = jax.random.split(key, 9)
    d, g1, g2 = MIXTURE.denoise, grid(128), grid(40)
    kw = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    return {
      'euler_ancestral': single_step.euler_ancestral(d, z * g1[0], g1, rng=keys[0]),
      'euler churn': single_step.euler(d, z * g1[0], g1, rng=keys[1], s_churn=20.0),
      'heun churn': single_step.heun(d, z * g2[0], g2, rng=keys[2], **CHURN),
      'dpm_2 churn': single_step.dpm_2(d, z * g2[0], g2, rng=keys[3], s_churn=10.0),
      'dpm_2_ancestral': single_step.dpm_2_ancestral(d, z * g2[0], g2, rng=keys[4]),
      'dpmpp_2s_ancestral': single_step.dpmpp_2s_ancestral(d, z * g2[0], g2, rng=keys[5]),
      'dpmpp_sde': single_step.dpmpp_sde(d, z * g2[0], g2, rng=keys[6]),
      'dpm_fast eta': dpm_solver.dpm_fast(d, z * 10.0, n=60, eta=1.0, rng=keys[7], **kw),
      'dpm_adaptive eta': dpm_solver.dpm_adaptive(
        d, z * 10.0, eta=1.0, rtol=0.02, rng=keys[8], **kw
      ),
    }

  for name, x in run(z, jax.random.key(1)).items():
    try:
      assert_matches_mixture(MIXTURE, np.asarray(x))
    except AssertionError as e:
      raise AssertionError(f'{name}: {e}') from None


def test_dpmpp_sde_draws_have_the_brownian_tree_correlation():
  sigma, sigma_s, sigma_next = jnp.float32(2.0), jnp.float32(1.2), jnp.float32(0.5)
  like = jnp.zeros((200_000,))
  key = jax.random.key(3)
  z1, z2 = jax.jit(lambda k: single_step.brownian_pair(k, 0, sigma, sigma_s, sigma_next, like))(key)
  y1, y2 = jax.jit(lambda k: single_step.brownian_pair(k, 1, sigma_next, 0.3, 0.1, like))(key)
  cov = np.cov(np.stack([z1, z2, y1, y2]))
  want = math.sqrt((2.0 - 1.2) / (2.0 - 0.5))  # Var(A) / sqrt(Var(A) Var(A + B))
  tol = 5 / math.sqrt(like.size)
  np.testing.assert_allclose(np.diag(cov), 1.0, atol=3 * tol)
  np.testing.assert_allclose(cov[0, 1], want, atol=tol)
  np.testing.assert_allclose(cov[2, 3], math.sqrt(0.2 / 0.4), atol=tol)
  np.testing.assert_allclose(cov[:2, 2:], 0.0, atol=tol)  # another step: independent

  # The rng path of dpmpp_sde uses exactly these pairs, over the right intervals.
  sig = schedules.karras_sigmas(5, SIGMA_MIN, SIGMA_MAX)
  x = jax.random.normal(jax.random.key(4), (8, 2)) * sig[0]

  def replay(i, s, sn):
    h = jnp.log(s) - jnp.log(sig[i + 1])
    pair = single_step.brownian_pair(key, i, s, s * jnp.exp(-0.5 * h), sig[i + 1], x)
    return jnp.where(sn == sig[i + 1], pair[1], pair[0])

  a, b = jax.jit(
    lambda x: (
      single_step.dpmpp_sde(MIXTURE.denoise, x, sig, rng=key),
      single_step.dpmpp_sde(MIXTURE.denoise, x, sig, noise_fn=replay),
    )
  )(x)
  np.testing.assert_allclose(a, b, atol=1e-6)


# ---------------------------------------------------------------------------
# Convergence orders and the adaptive solver's tolerance, on Gaussian data (closed form).

MU, STD = np.array([0.3, -0.2]), np.array([0.5, 0.25])
GAUSS = samplers.GaussianMixture([1.0], MU[None], STD[None])


def _exact_flow(x_from, sigma_from, sigma_to):
  """The probability-flow ODE for N(mu, diag std^2): x - mu scales by sqrt(std^2 + sigma^2)."""
  return MU + (x_from - MU) * np.sqrt(STD**2 + sigma_to**2) / np.sqrt(STD**2 + sigma_from**2)


def test_convergence_orders_and_adaptive_tolerance():
  lo, hi = 0.05, 5.0
  z = np.asarray(jax.random.normal(jax.random.key(5), (256, 2)), np.float64)
  exact = _exact_flow(z * hi, hi, lo)
  ns = (8, 16, 32)
  # n = 3k + 2: k third-order steps and one second-order one (local error O(h^3) too); for
  # n = 3k, k-diffusion's final [2, 1] steps make the global error O(h^2).
  fast_ns = (8, 14, 26)
  tols = (1e-2, 1e-3, 1e-4)

  @jax.jit
  def run(z):
    out = {}
    for m in ('euler', 'heun', 'dpm_2'):
      fn = single_step.FAST_SAMPLERS[m].fn
      # A grid ending at sigma_min (no step to 0): the ODE solution there is exact.
      out[m] = [fn(GAUSS.denoise, z * hi, schedules.karras_sigmas(n, lo, hi)[:-1]) for n in ns]
    kw = dict(sigma_min=lo, sigma_max=hi)
    out['dpm_fast'] = [dpm_solver.dpm_fast(GAUSS.denoise, z * hi, n=n, **kw) for n in fast_ns]
    out['adaptive'] = [
      dpm_solver.dpm_adaptive(GAUSS.denoise, z * hi, rtol=t, atol=t, return_info=True, **kw)
      for t in tols
    ]
    return out

  out = jax.tree.map(np.asarray, run(jnp.asarray(z, jnp.float32)))
  rms = lambda x: float(np.sqrt(np.mean((x - exact) ** 2)))
  orders = {}
  for m in ('euler', 'heun', 'dpm_2', 'dpm_fast'):
    err = np.array([rms(x) for x in out[m]])
    # NFE: euler N, heun / dpm_2 2N (no step to 0 on these grids), dpm_fast n.
    nfe = {'euler': ns, 'heun': 2 * np.array(ns), 'dpm_2': 2 * np.array(ns)}.get(m, fast_ns)
    orders[m] = -np.polyfit(np.log(nfe), np.log(err), 1)[0]  # slope of log err vs log NFE
    assert np.all(np.diff(err) < 0), (m, err)
  assert 0.85 < orders['euler'] < 1.3, orders
  assert 1.7 < orders['heun'] < 2.5 and 1.7 < orders['dpm_2'] < 2.5, orders
  assert 2.7 < orders['dpm_fast'] < 4.2, orders
  errs, nfes = [], []
  for tol, (x, info) in zip(tols, out['adaptive']):
    assert bool(info['done']) and int(info['n_accept']) + int(info['n_reject']) == info['steps']
    errs.append(rms(x))
    nfes.append(int(info['nfe']))
    assert errs[-1] < 10 * tol, (tol, errs)  # the per-step tolerance bounds the global error
  assert errs[0] > errs[1] > errs[2] and nfes[0] < nfes[1] < nfes[2], (errs, nfes)


# ---------------------------------------------------------------------------
# The contract: state threading and NFE, traced options, bounds, errors.


def _counting(calls):
  def denoise(x, sigma, state):
    jax.debug.callback(lambda c: calls.append(int(c)), state)
    return MIXTURE.denoise(x, sigma), state + 1

  return denoise


def test_state_is_threaded_through_every_call_and_nfe_is_exact():
  names = list(single_step.FAST_SAMPLERS)
  calls = {name: [] for name in [*names, 'dpm_fast', 'dpm_adaptive', 'bounded']}
  key = jax.random.key(6)

  @jax.jit
  def run(x, sig):  # a traced grid: the step to 0 is chosen inside the trace
    out = {}
    for name in names:
      fn = single_step.FAST_SAMPLERS[name].fn
      out[name] = fn(_counting(calls[name]), x * sig[0], sig, rng=key, init_state=jnp.int32(0))
    kw = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, init_state=jnp.int32(0))
    out['dpm_fast'] = dpm_solver.dpm_fast(_counting(calls['dpm_fast']), x * 10.0, n=7, **kw)
    out['dpm_adaptive'] = dpm_solver.dpm_adaptive(
      _counting(calls['dpm_adaptive']), x * 10.0, return_info=True, **kw
    )
    out['bounded'] = dpm_solver.dpm_adaptive(
      _counting(calls['bounded']), x * 10.0, return_info=True, max_steps=3, **kw
    )
    out['vmapped'] = jax.vmap(
      lambda xi: single_step.dpmpp_sde(MIXTURE.denoise, xi * sig[0], sig, rng=key)
    )(x[:, None])
    return out

  sig = schedules.karras_sigmas(6, SIGMA_MIN, SIGMA_MAX)
  x = jax.random.normal(jax.random.key(7), (16, 2))
  out = jax.block_until_ready(run(x, sig))
  jax.effects_barrier()
  for name in names:
    assert np.all(np.isfinite(out[name])), name
    spec = single_step.FAST_SAMPLERS[name]
    assert sorted(calls[name]) == list(range(spec.nfe(6))), (name, calls[name])
  assert sorted(calls['dpm_fast']) == list(range(7))
  x_a, info = out['dpm_adaptive']
  assert sorted(calls['dpm_adaptive']) == list(range(int(info['nfe'])))
  assert int(info['nfe']) <= dpm_solver.FAST_SAMPLERS['dpm_adaptive'].nfe(6) == 3000
  # At the bound: 3 attempts, 9 calls, the state at the last accepted time (not sigma_min).
  x_b, info_b = out['bounded']
  assert int(info_b['steps']) == 3 and int(info_b['nfe']) == 9 and not bool(info_b['done'])
  assert sorted(calls['bounded']) == list(range(9)) and np.all(np.isfinite(x_b))
  # vmap runs both branches of the step-to-0 cond: still finite.
  assert out['vmapped'].shape == (16, 1, 2) and np.all(np.isfinite(out['vmapped']))
  # The same sampler with a concrete grid (Python-side branch choices) gives the same.
  concrete = jax.jit(lambda x: single_step.dpm_2(MIXTURE.denoise, x * sig[0], sig))(x)
  np.testing.assert_allclose(out['dpm_2'], concrete, atol=1e-5)


def test_traced_eta_s_noise_churn_do_not_recompile_and_zero_is_deterministic():
  traces = []
  sig = schedules.karras_sigmas(6, SIGMA_MIN, SIGMA_MAX)
  kw = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)

  @jax.jit
  def run(x, eta, s_noise, s_churn, key):
    traces.append(1)
    d = MIXTURE.denoise
    x0 = x * sig[0]
    opts = dict(eta=eta, s_noise=s_noise, rng=key)
    return (
      single_step.euler_ancestral(d, x0, sig, **opts),
      single_step.dpm_2_ancestral(d, x0, sig, **opts),
      single_step.dpmpp_2s_ancestral(d, x0, sig, **opts),
      single_step.dpmpp_sde(d, x0, sig, **opts),
      single_step.heun(d, x0, sig, s_churn=s_churn, s_noise=s_noise, rng=key),
      single_step.dpm_2(d, x0, sig, s_churn=s_churn, s_noise=s_noise, rng=key),
      dpm_solver.dpm_fast(d, x * 10.0, n=8, **opts, **kw),
      dpm_solver.dpm_adaptive(d, x * 10.0, **opts, **kw),
    )

  @jax.jit
  def deterministic(x):
    d = MIXTURE.denoise
    x0 = x * sig[0]
    return (
      single_step.euler(d, x0, sig),
      single_step.dpm_2_ancestral(d, x0, sig, eta=0.0),
      single_step.dpmpp_2s_ancestral(d, x0, sig, eta=0.0),
      single_step.dpmpp_sde(d, x0, sig, eta=0.0),
      single_step.heun(d, x0, sig),
      single_step.dpm_2(d, x0, sig),
      dpm_solver.dpm_fast(d, x * 10.0, n=8, **kw),
      dpm_solver.dpm_adaptive(d, x * 10.0, **kw),
    )

  x = jax.random.normal(jax.random.key(8), (32, 2))
  key = jax.random.key(9)
  f = jnp.float32
  noisy = run(x, f(1.0), f(1.0), f(3.0), key)
  other = run(x, f(0.5), f(1.1), f(1.0), key)
  zero = run(x, f(0.0), f(1.0), f(0.0), key)
  assert len(traces) == 1
  for a, b in zip(noisy, other):
    assert not np.allclose(a, b)
  # Traced zeros give exactly the deterministic samplers (no stray rounding-level noise).
  for a, b in zip(zero, deterministic(x)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
  'call,needle',
  [
    (lambda d, x, s: single_step.euler_ancestral(d, x, s, eta=-1.0), 'eta'),
    (lambda d, x, s: single_step.dpm_2(d, x, s, s_noise=-1.0), 's_noise'),
    (lambda d, x, s: single_step.heun(d, x, s, s_churn=1.0), 'rng'),
    (lambda d, x, s: single_step.dpmpp_2s_ancestral(d, x, s), 'rng'),
    (lambda d, x, s: single_step.dpmpp_sde(d, x, s, r=0.0, rng=jax.random.key(0)), 'r=0.0'),
    (lambda d, x, s: single_step.dpm_2(d, x, jnp.array([0.5, 1.0, 0.0])), 'sigmas'),
    (lambda d, x, s: dpm_solver.dpm_fast(d, x, sigma_min=0.0, sigma_max=1.0, n=4), 'sigma_min'),
    (lambda d, x, s: dpm_solver.dpm_fast(d, x, sigma_min=2.0, sigma_max=1.0, n=4), 'sigma_max'),
    (lambda d, x, s: dpm_solver.dpm_fast(d, x, sigma_min=0.1, sigma_max=1.0, n=0), 'n'),
    (lambda d, x, s: dpm_solver.dpm_fast(d, x, sigma_min=0.1, sigma_max=1.0, n=3, eta=1), 'rng'),
    (lambda d, x, s: dpm_solver.dpm_adaptive(d, x, sigma_min=0.1, sigma_max=1.0, order=1), 'order'),
    (lambda d, x, s: dpm_solver.dpm_adaptive(d, x, sigma_min=0.1, sigma_max=1.0, rtol=-1), 'rtol'),
    (
      lambda d, x, s: dpm_solver.dpm_adaptive(d, x, sigma_min=0.1, sigma_max=1.0, max_steps=0),
      'max_steps',
    ),
  ],
)
def test_bad_options_raise_one_line_value_errors(call, needle):
  with pytest.raises(ValueError, match=needle) as info:
    call(MIXTURE.denoise, jnp.zeros((2, 2)), schedules.karras_sigmas(4))
  assert '\n' not in str(info.value)


def test_fast_sampler_table():
  table = {**single_step.FAST_SAMPLERS, **dpm_solver.FAST_SAMPLERS}
  assert set(table) == {
    'euler',
    'heun',
    'euler_ancestral',
    'dpm_2',
    'dpm_2_ancestral',
    'dpmpp_2s_ancestral',
    'dpmpp_sde',
    'dpm_fast',
    'dpm_adaptive',
  }
  nfe = {name: spec.nfe(10) for name, spec in table.items()}
  assert nfe == {
    'euler': 10,
    'euler_ancestral': 10,
    'heun': 19,
    'dpm_2': 19,
    'dpm_2_ancestral': 19,
    'dpmpp_2s_ancestral': 19,
    'dpmpp_sde': 19,
    'dpm_fast': 10,
    'dpm_adaptive': 3000,
  }
  assert table['dpm_adaptive'].nfe(10, order=2, max_steps=50) == 100
  assert table['dpm_fast'].grid_free and table['dpm_adaptive'].grid_free
  assert dpm_solver.fast_orders(9) == [3, 3, 2, 1] and dpm_solver.fast_orders(10) == [3, 3, 3, 1]
  assert [sum(dpm_solver.fast_orders(n)) for n in range(1, 13)] == list(range(1, 13))
