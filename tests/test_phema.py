"""Tests of EDM2's post-hoc EMA (diffusion_jax/training/phema.py) and its training wiring.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
Sec. 3, App. C.1-C.2. The math is checked against float64 numpy; the trainer runs the
tiny digits config once straight and once killed and resumed (one compiled step), and
main.py reconstructs a std from the straight run's snapshots and samples from it.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as main_lib  # noqa: E402
from configs import digits  # noqa: E402
from diffusion_jax import build, training  # noqa: E402
from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax.training import checkpointing, phema, sharding  # noqa: E402


@pytest.mark.parametrize('std,gamma', [(0.05, 16.97), (0.10, 6.94)])
def test_std_to_gamma_gives_the_papers_exponents(std, gamma):
  assert float(phema.std_to_gamma(std)) == pytest.approx(gamma, abs=0.005)
  # Eq. 123 inverts Eq. 126, elementwise.
  stds = np.array([0.01, 0.05, 0.1, 0.2, 0.29])
  np.testing.assert_allclose(phema.gamma_to_std(phema.std_to_gamma(stds)), stds, rtol=1e-10)


@pytest.mark.parametrize('std', [0.0, -0.1, 0.3, float('nan')])
def test_bad_std_fails_naming_the_key(std):
  with pytest.raises(ValueError, match='config.training.phema_stds'):
    phema.std_to_gamma(std)


def test_update_matches_a_float64_loop_and_the_closed_form_weights():
  steps, stds = 300, (0.05, 0.10)
  rng = np.random.default_rng(0)
  seq = {
    'w': rng.normal(size=(steps, 4, 3)).cumsum(0),
    'b': rng.normal(size=(steps, 3)),
  }
  first = jax.tree.map(lambda x: jnp.asarray(x[0] * 0 + 7.0, jnp.float32), seq)

  @jax.jit
  def run(seq):
    def body(profiles, inputs):
      t, params = inputs
      profiles = phema.update(profiles, params, t, stds)
      return profiles, profiles

    ts = jnp.arange(1, steps + 1)
    return jax.lax.scan(body, phema.init(first, stds), (ts, seq))[1]

  tracked = run(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), seq))
  for i, std in enumerate(stds):
    gamma = float(phema.std_to_gamma(std))
    ema = {k: np.full(v.shape[1:], 7.0) for k, v in seq.items()}
    for t in range(1, steps + 1):
      beta = (1.0 - 1.0 / t) ** (gamma + 1.0)
      ema = {k: beta * ema[k] + (1.0 - beta) * seq[k][t - 1] for k in ema}
      if t == 1:  # beta_1 = 0: the average starts at the first trained parameters
        np.testing.assert_array_equal(tracked[i]['b'][0], np.float32(seq['b'][0]))
      for k in ema:
        np.testing.assert_allclose(tracked[i][k][t - 1], ema[k], rtol=2e-5, atol=2e-5)
    # Unrolled Eq. 127: theta_tau's weight is (tau^(g+1) - (tau-1)^(g+1)) / t^(g+1).
    w = phema.response(steps, std)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    for k in ema:
      np.testing.assert_allclose(np.tensordot(w, seq[k], axes=1), ema[k], rtol=1e-9, atol=1e-9)


def test_inner_products_match_a_numeric_integral():
  tau = np.linspace(0.0, 1000.0, 2_000_001)

  def profile(t, std):
    g = float(phema.std_to_gamma(std))
    return np.where(tau <= t, (g + 1) * (tau / t) ** g / t, 0.0)

  for (ta, sa), (tb, sb) in [((1000, 0.05), (1000, 0.10)), ((400, 0.10), (900, 0.05))]:
    want = np.trapezoid(profile(ta, sa) * profile(tb, sb), tau)
    assert float(phema.inner_products(ta, sa, tb, sb)) == pytest.approx(want, rel=1e-5)
    assert float(phema.inner_products(tb, sb, ta, sa)) == pytest.approx(want, rel=1e-5)


def test_reconstructs_a_profile_that_was_also_tracked():
  """Track stds 0.05, 0.07, 0.10; rebuild 0.07 from 40 snapshots of the other two."""
  steps, every, dim = 2000, 50, 256
  stds = (0.05, 0.07, 0.10)
  rng = np.random.default_rng(1)
  t = np.arange(1, steps + 1)[:, None]
  # A noisy random walk around slow oscillations: the parameters move on every scale.
  traj = 0.1 * rng.normal(size=(steps, dim)).cumsum(0) + np.sin(t / rng.uniform(150, 600, dim))
  traj = jnp.asarray(traj, jnp.float32)

  @jax.jit
  def track(traj):
    def body(profiles, inputs):
      profiles = phema.update(profiles, inputs[1], inputs[0], stds)
      return profiles, profiles

    chunks = traj.reshape(steps // every, every, dim)
    ts = jnp.arange(1, steps + 1).reshape(chunks.shape[:2])

    def chunk(profiles, inputs):
      profiles = jax.lax.scan(body, profiles, inputs)[0]
      return profiles, profiles  # a snapshot at the end of every chunk

    return jax.lax.scan(chunk, phema.init(traj[0], stds), (ts, chunks))[1]

  snaps = track(traj)  # per std: [snapshots, dim]
  snap_steps = list(range(every, steps + 1, every))
  in_t = [s for s in snap_steps for _ in (0, 2)]
  in_std = [stds[i] for _ in snap_steps for i in (0, 2)]
  trees = [snaps[i][j] for j in range(len(snap_steps)) for i in (0, 2)]
  x = phema.solve(in_t, in_std, steps, 0.07)
  assert np.sum(x) == pytest.approx(1.0)
  assert phema.residual(in_t, in_std, steps, 0.07, x) < 2e-3  # profile L2 error

  rebuilt = np.asarray(phema.combine(x, trees))
  tracked = np.asarray(snaps[1][-1])
  error = np.linalg.norm(rebuilt - tracked)
  inputs = [np.linalg.norm(np.asarray(snaps[i][-1]) - tracked) for i in (0, 2)]
  assert error < 1e-3 * min(inputs), (error, inputs)


@pytest.fixture(scope='module')
def config():
  c = digits.get_config('tiny')
  t = c.training
  t.num_steps, t.checkpoint_every, t.phema_snapshot_every = 8, 4, 2
  return c


@pytest.fixture(scope='module')
def straight(config, tmp_path_factory):
  """An uninterrupted run: (final state on the host, workdir, setup)."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  # One device: a third less compiling than eight (the sharding is checked without a run).
  setup = training.create_train_setup(config, mesh=sharding.create_mesh(1, jax.devices()[:1]))
  state = training.train_and_evaluate(config, workdir, setup=setup)
  return jax.device_get(state), workdir, setup


def test_profiles_are_sharded_like_the_params():
  c = digits.get_config()  # built, never run: large enough for the 'fsdp' split
  c.training.mesh_fsdp, c.training.phema_snapshot_every = 2, 100
  shardings = build.build(config_lib.build_run_config(c)).state_sharding
  assert len(shardings.phema_params) == 2
  assert any('fsdp' in tuple(s.spec) for s in jax.tree.leaves(shardings.params))
  for profile in shardings.phema_params:
    assert jax.tree.leaves(profile) == jax.tree.leaves(shardings.params)
  c.training.phema_snapshot_every = 0
  assert build.build(config_lib.build_run_config(c)).state_sharding.phema_params == ()


def _profiles(workdir, setup, step):
  abstract = build.abstract_params(setup.components)
  with checkpointing.PhemaSnapshots(workdir, read_only=True) as snaps:
    return snaps.stds(step), jax.device_get(snaps.restore(step, [abstract, abstract]))


def test_training_snapshots_profiles_and_a_killed_run_resumes_with_them(straight, config, tmp_path):
  state, workdir, setup = straight
  assert len(state.phema_params) == 2
  with checkpointing.PhemaSnapshots(workdir, read_only=True) as snaps:
    assert snaps.steps() == [2, 4, 6, 8]
  stds, last = _profiles(workdir, setup, 8)
  assert stds == [0.05, 0.10]
  for got, want in zip(jax.tree.leaves(last), jax.tree.leaves(state.phema_params)):
    np.testing.assert_array_equal(got, want)
  # The profiles average differently from each other and from the classic EMA.
  a, b = (jax.tree.leaves(p)[0] for p in state.phema_params)
  assert np.abs(a - b).max() > 0 and np.abs(a - jax.tree.leaves(state.ema_params)[0]).max() > 0

  def crash_at_7(step, _):
    if step == 7:  # after the snapshot of step 6, the last checkpoint is of step 4
      raise RuntimeError('simulated crash')

  resumed_dir = str(tmp_path)
  with pytest.raises(RuntimeError, match='simulated crash'):
    training.train_and_evaluate(config, resumed_dir, step_callback=crash_at_7, setup=setup)
  assert checkpointing.latest_step(resumed_dir) == 4
  resumed = jax.device_get(training.train_and_evaluate(config, resumed_dir, setup=setup))
  for got, want in zip(jax.tree.leaves(resumed.phema_params), jax.tree.leaves(state.phema_params)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  for step in (6, 8):  # redone after the resume from step 4
    for got, want in zip(
      jax.tree.leaves(_profiles(resumed_dir, setup, step)[1]),
      jax.tree.leaves(_profiles(workdir, setup, step)[1]),
    ):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _main(argv, monkeypatch):
  argv = ['main.py', *argv, '--compilation_cache_dir=none']
  monkeypatch.setattr(sys, 'argv', argv)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  main_lib.main(['main.py'])


def test_main_reconstructs_a_std_and_samples_from_it(straight, monkeypatch):
  _, workdir, setup = straight
  common = [f'--config={ROOT}/configs/digits.py:tiny', f'--workdir={workdir}']
  with pytest.raises(SystemExit, match='reconstruct it first with --mode=phema'):
    _main([*common, '--mode=sample', '--phema_std=0.08'], monkeypatch)
  _main([*common, '--mode=phema', '--phema_std=0.08'], monkeypatch)
  out = phema.export_dir(workdir, 0.08)
  assert checkpointing.latest_step(out) == 8

  # The export is the solve's combination of every profile of every snapshot.
  steps = [2, 4, 6, 8]
  x = phema.solve([s for s in steps for _ in '..'], [0.05, 0.10] * len(steps), 8, 0.08)
  want = phema.combine(x, [p for s in steps for p in _profiles(workdir, setup, s)[1]])
  abstract = build.abstract_params(setup.components)
  got = checkpointing.restore_ema_params(out, abstract)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)

  _main(
    [*common, '--mode=sample', '--phema_std=0.08', '--config.sample.num_samples=10'], monkeypatch
  )
  with np.load(os.path.join(out, 'samples', 'chen_ddpm_step_000008.npz')) as f:
    assert f['images'].shape == (10, 16, 16, 1)

  # An earlier snapshot step replaces the export; a step without a snapshot is refused.
  _main([*common, '--mode=phema', '--phema_std=0.08', '--phema_step=4'], monkeypatch)
  assert checkpointing.latest_step(out) == 4
  with pytest.raises(SystemExit, match=r'--phema_step=5 is not a snapshot step'):
    _main([*common, '--mode=phema', '--phema_std=0.08', '--phema_step=5'], monkeypatch)


def test_checkpoints_keep_the_profiles_and_say_when_a_run_lacks_them(tmp_path):
  p = {'w': jnp.arange(6.0).reshape(2, 3)}
  state = training.TrainState(
    step=jnp.int32(4),
    params=p,
    ema_params=p,
    opt_state={},
    rng=jax.random.PRNGKey(0),
    objective_state={},
    phema_params=(jax.tree.map(lambda x: x + 1, p), jax.tree.map(lambda x: x + 2, p)),
  )
  plain = state.replace(phema_params=())
  abstract = lambda s: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), s)
  for name, saved in (('with', state), ('without', plain)):
    with checkpointing.Checkpointer(str(tmp_path / name), save_every=1) as ckpt:
      ckpt.save(4, saved, force=True)
  with checkpointing.Checkpointer(str(tmp_path / 'with'), save_every=1) as ckpt:
    restored = ckpt.restore(abstract(state))
    np.testing.assert_array_equal(restored.phema_params[1]['w'], state.phema_params[1]['w'])
    assert ckpt.restore(abstract(plain)).phema_params == ()  # post-hoc EMA turned off
  with checkpointing.Checkpointer(str(tmp_path / 'without'), save_every=1) as ckpt:
    with pytest.raises(ValueError, match='phema_snapshot_every=0 to resume it'):
      ckpt.restore(abstract(state))
