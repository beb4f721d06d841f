"""Tests of the paper reproductions in experiments/: each checks the numbers it reports."""

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

from diffusion_jax.samplers import GaussianMixture

# experiments/ sits at the repository root, beside the installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import (  # noqa: E402
  chen_schedules,
  edm_samplers,
  iddpm_schedules,
  ncsn_techniques,
  ode_likelihood,
  reproduce,
)


def _chen_gamma_np(family, t, params=()):
  """Chen 2023 Algorithm 1 in float64 numpy (without the clip, for 0 < gamma < 1)."""
  if family == 'linear':
    return 1.0 - t
  start, end, tau = params
  if family == 'cosine':
    f = lambda u: np.cos(u * np.pi / 2) ** (2 * tau)
  else:
    f = lambda u: 1.0 / (1.0 + np.exp(-u / tau))
  v_start, v_end = f(start), f(end)
  return (v_end - f(t * (end - start) + start)) / (v_end - v_start)


def _half_time_closed_form(family, params=()):
  """t with gamma(t) = 1/2, solved by hand from Algorithm 1."""
  if family == 'linear':
    return 0.5
  start, end, tau = params
  if family == 'cosine':
    mid = 0.5 * (
      math.cos(start * math.pi / 2) ** (2 * tau) + math.cos(end * math.pi / 2) ** (2 * tau)
    )
    u = math.acos(mid ** (1 / (2 * tau))) * 2 / math.pi
  else:
    sig = lambda v: 1 / (1 + math.exp(-v / tau))
    mid = 0.5 * (sig(start) + sig(end))
    u = tau * math.log(mid / (1 - mid))
  return (u - start) / (end - start)


def test_chen_fig3_half_noise_times_and_curves():
  result = chen_schedules.schedule_families(num_points=4001)
  assert len(result['rows']) == 1 + len(chen_schedules.COSINE_VARIANTS) + len(
    chen_schedules.SIGMOID_VARIANTS
  )
  t = result['t']
  for row in result['rows']:
    expected = _half_time_closed_form(row['family'], row['params'])
    assert row['t_half'] == pytest.approx(expected, abs=2e-4), row['label']
    gamma, logsnr = result['curves'][row['label']]
    g64 = _chen_gamma_np(row['family'], t, row['params'])
    # Away from t = 0 (float32 rounding of 1 - gamma) and from gamma ~ 0, where float32
    # cancellation in (v_end - out) leaves only absolute accuracy (and the clip at 1e-9).
    np.testing.assert_allclose(gamma, np.clip(g64, 1e-9, 1), rtol=0, atol=2e-6)
    inner = (t > 0.02) & (g64 > 1e-4)
    assert inner.sum() > 0.8 * len(t)
    g64 = g64[inner]
    np.testing.assert_allclose(logsnr[inner], np.log(g64 / (1 - g64)), atol=2e-3)
  by_label = {r['label']: r for r in result['rows']}
  # Higher tau / a later sigmoid range -> more of training spent at logSNR < 0.
  cos = [by_label[f'cosine(0.2,1,{tau})']['noisy_fraction'] for tau in (1, 2, 3)]
  sig = [by_label[f'sigmoid(0,3,{tau:g})']['noisy_fraction'] for tau in (0.3, 0.5, 0.7, 0.9)]
  assert cos == sorted(cos) and sig == sorted(sig, reverse=True)


def test_chen_fig5_scaling_shift_is_two_log_b():
  result = chen_schedules.input_scaling(num_points=501)
  assert [r['b'] for r in result['scales']] == list(chen_schedules.SCALES)
  for r in result['scales']:
    assert r['two_log_b'] == pytest.approx(2 * math.log(r['b']), abs=1e-12)
    assert r['mean_shift'] == pytest.approx(r['two_log_b'], abs=1e-5)
    assert r['edm_mean_shift'] == pytest.approx(r['two_log_b'], abs=1e-5)
    assert r['max_dev'] < 1e-5 and r['edm_max_dev'] < 1e-5
  # The scaled curves against the float64 formula log(g b^2 / (1 - g)), g = 1 - t.
  t = result['t']
  for b in chen_schedules.SCALES:
    np.testing.assert_allclose(
      result['curves'][f'linear, b={b:g}'], np.log((1 - t) * b**2 / t), atol=1e-4
    )
  # Input scaling is a constant shift; a change of shape is not.
  for r in result['shapes']:
    if r['label'].startswith('linear'):
      assert r['diff_range'] < 1e-5 and r['diff_at'][0.5] == pytest.approx(2 * math.log(0.5))
    else:
      assert r['diff_range'] > 1.0, r


def _ratio_paper_form(eps, g, s_l, T):
  """Proposition 3 exactly as printed in the paper, float64."""
  a = 1 - eps / s_l**2
  fixed = 2 * eps / (s_l**2 - s_l**2 * a**2)
  return a ** (2 * T) * (g**2 - fixed) + fixed


def test_ncsn_techniques_reproduce_cifar10_numbers():
  result = ncsn_techniques.technique_4_and_2(num_samples=200_000)
  g = (50 / 0.01) ** (1 / 231)
  assert result['ratio'] == pytest.approx(g, rel=1e-12)
  assert result['eps'] == pytest.approx(6.18e-6, rel=0.01)
  assert result['variance_ratio'] == pytest.approx(
    _ratio_paper_form(result['eps'], g, 0.01, 5), rel=1e-5
  )
  assert result['variance_ratio'] == pytest.approx(1.055, abs=1e-3)
  # eps minimizes |ratio - 1| on a float64 grid of the paper's formula.
  grid = np.exp(np.linspace(np.log(1e-7), np.log(5e-5), 200_001))
  best = grid[np.argmin(np.abs(_ratio_paper_form(grid, g, 0.01, 5) - 1))]
  assert result['eps'] == pytest.approx(best, rel=1e-3)
  # The Monte Carlo Langevin chain agrees within 4 standard errors and is far from gamma^2.
  assert abs(result['mc_ratio'] - result['variance_ratio']) < 4 * result['mc_stderr']
  assert abs(result['mc_ratio'] - g**2) > 4 * result['mc_stderr']
  # Technique 2.
  assert result['chosen_levels'] == 219
  assert result['criterion_232'] == pytest.approx(0.567, abs=2e-3)
  for lv in result['levels']:
    gl = (50 / 0.01) ** (1 / (lv['L'] - 1))
    c = np.sqrt(2 * 3072) * (gl - 1)
    assert lv['criterion'] == pytest.approx(ndtr(c + 3 * gl) - ndtr(c - 3 * gl), abs=1e-5)
  crit = [lv['criterion'] for lv in result['levels']]
  assert crit == sorted(crit)
  for s in result['steps']:  # more steps always get closer to 1
    assert s['ratio'] == pytest.approx(_ratio_paper_form(s['eps'], g, 0.01, s['T']), rel=1e-5)
  ratios = [s['ratio'] for s in result['steps']]
  assert ratios == sorted(ratios, reverse=True) and ratios[-1] > 1.0
  d = result['digits']
  assert d['dim'] == 64 and 2 <= d['L'] < 219 and 0 < d['eps'] < d['sigma_min'] ** 2


def test_iddpm_linear_vs_cosine_shares():
  result = iddpm_schedules.linear_vs_cosine()
  T = result['num_timesteps']
  lin = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
  np.testing.assert_allclose(result['abar']['linear'], lin, rtol=1e-12)
  f = lambda t: np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2
  steps = np.arange(1, T)  # the last step is changed by the 0.999 clip on beta
  np.testing.assert_allclose(result['abar']['cosine'][:-1], f(steps) / f(0), rtol=1e-9)
  for name, abar in (('linear', lin), ('cosine', result['abar']['cosine'])):
    stats = result[name]
    logsnr = np.log(abar / (1 - abar))
    assert stats['noise_share'] == pytest.approx(np.count_nonzero(abar < 1e-3) / T)
    assert stats['middle_share_2'] == pytest.approx(np.count_nonzero(np.abs(logsnr) <= 2) / T)
    assert stats['logsnr_last'] == pytest.approx(logsnr[-1])
    # Steps near pure noise form one block at the end of the chain.
    k = round(stats['noise_start_fraction'] * T)
    assert np.all(abar[k:] < 1e-3) and np.all(abar[:k] >= 1e-3)
  assert result['linear']['noise_share'] == pytest.approx(0.175)
  assert result['linear']['noise_share'] > 0.15 > 0.05 > result['cosine']['noise_share']
  assert result['cosine']['middle_share_2'] > result['linear']['middle_share_2']
  assert result['linear']['logsnr_last'] == pytest.approx(-10.12, abs=0.01)


@pytest.fixture(scope='module')
def mixture():
  return edm_samplers.digits_mixture()


def test_edm_euler_first_order_heun_second_order(mixture):
  result = edm_samplers.sampler_error(
    num_samples=64,
    step_counts=(8, 16, 32, 64),
    rhos=(1.0, 3.0, 7.0, 20.0),
    rho_step_counts=(16,),
    reference_steps=256,
    slope_from=16,
    mixture=mixture,
  )
  assert -1.2 < result['slope']['euler'] < -0.8
  assert -2.4 < result['slope']['heun'] < -1.7
  heun = {r['steps']: r for r in result['nfe']['heun']}
  euler = {r['steps']: r for r in result['nfe']['euler']}
  assert heun[64]['nfe'] == 127 and euler[64]['nfe'] == 64
  assert heun[64]['median'] < euler[64]['median'] / 5
  rho = {r['rho']: r['median'] for r in result['rho'][16]}
  assert rho[1.0] > 10 * rho[7.0] and rho[3.0] > rho[7.0]
  assert rho[7.0] == pytest.approx(heun[16]['median'])

  # Padding the grid with repeated sigma_max steps changes nothing.
  z = result['z']
  solver = edm_samplers.make_solver(mixture.denoise, 'heun')
  padded = np.asarray(solver(edm_samplers.padded_sigmas(8, 64), z))
  direct = np.asarray(solver(edm_samplers.padded_sigmas(8, 8), z))
  np.testing.assert_allclose(padded, direct, atol=1e-6)
  np.testing.assert_allclose(
    edm_samplers.sample_errors(padded, result['reference']),
    edm_samplers.sample_errors(direct, result['reference']),
    atol=1e-6,
  )


def test_edm_heun_converges_to_gaussian_closed_form():
  # One isotropic Gaussian: the ODE solution scales x - mu by sqrt(s^2 + sigma^2), and the
  # final step to sigma = 0 is D(x; sigma_min) = mu + s^2 / (s^2 + sigma_min^2) (x - mu).
  s, dim = 0.3, 16
  mu = np.linspace(-0.5, 0.5, dim)
  gauss = GaussianMixture([1.0], mu[None], [s])
  z = np.random.default_rng(0).standard_normal((32, dim)).astype(np.float32)
  lo, hi = edm_samplers.SIGMA_MIN, edm_samplers.SIGMA_MAX
  expected = mu + (z * hi - mu) * s**2 / (math.sqrt(s**2 + lo**2) * math.sqrt(s**2 + hi**2))
  solver = edm_samplers.make_solver(gauss.denoise, 'heun')
  err = {}
  for n in (128, 256):
    x = np.asarray(solver(edm_samplers.padded_sigmas(n, 256), z), np.float64)
    err[n] = np.max(np.abs(x - expected))
  assert err[256] < 5e-4
  assert 3.5 < err[128] / err[256] < 4.5  # second order: halving the step quarters the error
  assert edm_samplers.loglog_slope([1, 10, 100], [1.0, 0.01, 1e-4]) == pytest.approx(-2.0)


def test_reproduce_driver_writes_page_figure_and_index(tmp_path):
  assert reproduce.main(['--only', iddpm_schedules.NAME, '--out_dir', str(tmp_path)]) == 0
  png = tmp_path / f'{iddpm_schedules.NAME}.png'
  md = tmp_path / f'{iddpm_schedules.NAME}.md'
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert 1_000 < os.path.getsize(png) < 150_000
  text = md.read_text()
  assert f'python -m experiments.reproduce --only {iddpm_schedules.NAME}' in text
  assert '| share of steps near pure noise (abar < 1e-3) | 0.175 |' in text
  index = (tmp_path / 'README.md').read_text()
  for name in reproduce.REPRODUCTIONS:
    assert f'{name}.md' in index
  with pytest.raises(SystemExit):
    reproduce.main(['--only', 'no_such_reproduction'])


TPU_POD = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments', 'tpu_pod'
)
TPU_SCRIPTS = ('create.sh', 'setup.sh', 'launch.sh', 'logs.sh', 'stop.sh', 'delete.sh')


def _dry_run(script, *args, **env):
  import subprocess

  full_env = {'PATH': os.environ['PATH'], 'HOME': os.environ.get('HOME', '/tmp'), 'DRY_RUN': '1'}
  full_env.update(env)
  return subprocess.run(
    ['bash', os.path.join(TPU_POD, script), *args],
    env=full_env,
    capture_output=True,
    text=True,
    timeout=60,
  )


def _bash_words(line):
  """The words of a bash-quoted command line (printf %q output), decoded by bash itself."""
  import subprocess

  decode = 'eval "words=($1)"; printf "%s\\0" "${words[@]}"'
  out = subprocess.run(['bash', '-c', decode, '_', line], capture_output=True, text=True)
  return out.stdout.split('\0')[:-1]


def test_tpu_pod_scripts_build_the_gcloud_commands():
  import shlex

  env = dict(
    PROJECT='proj-1',
    ZONE='us-central2-b',
    TPU_NAME='pod-a',
    ACCELERATOR_TYPE='v4-32',
    WORKDIR='gs://bucket/run 1',
    REPO_URL='https://example.com/r.git',
    SPOT='1',
  )
  commands = {}
  for script in TPU_SCRIPTS:
    extra = ('--config.training.batch_size=64',) if script == 'launch.sh' else ()
    proc = _dry_run(script, *extra, **env)
    assert proc.returncode == 0, (script, proc.stderr)
    lines = [_bash_words(line[2:]) for line in proc.stdout.splitlines() if line.startswith('+ ')]
    assert lines, (script, proc.stdout)
    commands[script] = lines
  create = commands['create.sh'][0]
  assert create[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  assert create[5] == 'pod-a' and '--spot' in create
  for flag in (
    '--project=proj-1',
    '--zone=us-central2-b',
    '--accelerator-type=v4-32',
    '--version=tpu-ubuntu2204-base',
  ):
    assert flag in create
  for script in ('setup.sh', 'launch.sh', 'stop.sh'):
    ssh = commands[script][-1]
    assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pod-a']
    assert '--worker=all' in ssh and '--project=proj-1' in ssh
  setup = next(a for a in commands['setup.sh'][-1] if a.startswith('--command='))
  assert 'pip install "jax[tpu]==0.10.2"' in setup and 'pip install -e diffusion_jax' in setup
  assert 'git clone --depth 1 --branch main https://example.com/r.git diffusion_jax' in setup
  launch = next(a for a in commands['launch.sh'][-1] if a.startswith('--command='))
  remote = shlex.split(launch.split('nohup ', 1)[1].split(' > ', 1)[0])
  assert remote == [
    'python3',
    'main.py',
    '--config=configs/imagenet64.py',
    '--workdir=gs://bucket/run 1',
    '--config.training.batch_size=64',
  ]
  assert '--worker=0' in commands['logs.sh'][-1]
  assert commands['delete.sh'][0][4:6] == ['delete', 'pod-a']


def test_tpu_pod_scripts_refuse_missing_settings_and_pass_shellcheck():
  import shutil
  import subprocess

  proc = _dry_run('launch.sh', PROJECT='proj-1')
  assert proc.returncode != 0 and 'WORKDIR is not set' in proc.stderr
  for script in TPU_SCRIPTS + ('env.sh',):
    path = os.path.join(TPU_POD, script)
    assert subprocess.run(['bash', '-n', path]).returncode == 0, script
    if script != 'env.sh':
      assert os.access(path, os.X_OK), f'{script} is not executable'
      assert 'set -euo pipefail' in open(path).read()
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not installed')
  proc = subprocess.run(
    ['shellcheck', '-x', *TPU_SCRIPTS, 'env.sh'], cwd=TPU_POD, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stdout


def test_every_config_sets_its_reference_recipe():
  from experiments import recipes

  problems = [p for name in recipes.RECIPES for p in recipes.check(name)]
  assert not problems, '\n'.join(problems)


def test_recipe_check_names_the_drifted_setting(monkeypatch):
  from experiments import recipes

  drifted = recipes.load_config('imagenet64')
  drifted.diffusion.label_drop_prob = 0.1
  monkeypatch.setattr(recipes, 'load_config', lambda name: drifted)
  problems = recipes.check('imagenet64')
  assert len(problems) == 1 and 'diffusion.label_drop_prob = 0.1, reference 0.0' in problems[0]


def test_recipes_page_is_up_to_date():
  from experiments import recipes

  with open(os.path.join(recipes.report.RESULTS_DIR, 'recipes.md')) as f:
    assert f.read() == recipes.render(), 'run `python -m experiments.recipes` and commit the page'


def test_every_code_fact_names_a_test_that_exists():
  from experiments import recipes

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for fact in recipes.CODE_FACTS:
    path = None
    for ref in fact.test.split(', '):
      if '::' in ref and not ref.startswith('::'):
        path, name = ref.split('::')
      else:
        name = ref[2:]
      with open(os.path.join(root, path)) as f:
        assert f'def {name}(' in f.read(), f'{path}::{name} is missing'


# ---------------------------------------------------------------------------------------------
# Probability-flow ODE likelihood on Gaussian data (exact denoiser, closed-form density).


def _gaussian_problem(d=6, n=512, seed=10):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  cov = (q * rng.uniform(0.05, 0.5, d)) @ q.T  # full covariance: off-diagonal Jacobians
  cov_j = jnp.asarray(cov, jnp.float32)

  def denoise(x, sigma):  # E[x0 | x0 + sigma n = x] for x0 ~ N(0, cov)
    return x @ (cov_j @ jnp.linalg.inv(cov_j + sigma**2 * jnp.eye(d))).T

  return cov, denoise, rng


def _gaussian_logpdf(x, cov):
  x = x.reshape(len(x), -1).astype(np.float64)
  prec = np.linalg.inv(cov)
  return -0.5 * np.einsum('bi,ij,bj->b', x, prec, x) - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]


@pytest.mark.parametrize('probe', ['exact', 'rademacher'])
def test_ode_likelihood_matches_gaussian_closed_form(probe):
  cov, denoise, rng = _gaussian_problem()
  sigma_min, n = 0.002, 512
  c = cov + sigma_min**2 * np.eye(6)  # the ODE's density at sigma_min is N(0, cov + s^2 I)
  x = rng.multivariate_normal(np.zeros(6), c, size=n).astype(np.float32)
  fn = jax.jit(
    lambda x, r: ode_likelihood.ode_log_likelihood(
      denoise, x, r, sigma_min=sigma_min, num_steps=64, probe=probe
    )[0]
  )
  err = np.asarray(fn(jnp.asarray(x), jax.random.key(0)), np.float64) - _gaussian_logpdf(x, c)
  # Deterministic error: RK4 with 64 steps plus the N(0, sigma_max^2) prior replacing
  # N(0, cov + sigma_max^2) (~ tr(cov) / (2 sigma_max^2) ~ 1e-4 nats).
  bias_tol = 2e-3
  if probe == 'exact':
    assert np.abs(err).max() < bias_tol
  else:
    # Hutchinson: unbiased, with per-example noise; the mean is within 4 standard errors.
    assert err.std() > 1e-3  # the estimator is really stochastic here
    assert abs(err.mean()) < bias_tol + 4 * err.std() / np.sqrt(n)


def test_ode_bits_per_dim_closed_form():
  var = 0.3**2
  sigma_min = 0.002

  def denoise(x, sigma):  # isotropic Gaussian data N(0, var I)
    return var / (var + sigma**2) * x

  rng = np.random.default_rng(11)
  levels = rng.integers(0, 256, (8, 2, 2, 1))
  images = jnp.asarray(levels / 127.5 - 1.0, jnp.float32)
  bpd = jax.jit(
    lambda x, r: ode_likelihood.ode_nll_bits_per_dim(
      denoise, x, r, dequantize=False, sigma_min=sigma_min, probe='exact'
    )
  )(images, jax.random.key(1))
  centres = (levels + 0.5) / 128.0 - 1.0  # bin k spans [k/128 - 1, (k+1)/128 - 1)
  logp = _gaussian_logpdf(centres, (var + sigma_min**2) * np.eye(4))
  np.testing.assert_allclose(np.asarray(bpd), -logp / (4 * np.log(2)) + 7.0, atol=1e-3)
  with pytest.raises(ValueError, match='probe'):
    ode_likelihood.ode_log_likelihood(denoise, images, jax.random.key(0), probe='sobol')
