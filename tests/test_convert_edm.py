"""EDM's networks (SongUNet DDPM++ / NCSN++, DhariwalUNet) and preconditionings; the edm format.

The PyTorch reference is tests/reference_nets/edm_networks.py, a transcription of EDM's
training/networks.py. It is checked against the reference code's layer list and parameter
counts (recorded from the real code, full size; compared with the real code itself, and
with pickles written by its own persistence module, when the repository is at hand:
EDM_REPO, a checkout or bare git mirror). Test pickles are written the way EDM writes
them (reference_nets.edm_networks.pickle_like_edm) and read back without the repository.
"""

import hashlib
import importlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

torch = pytest.importorskip('torch')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as main_lib  # noqa: E402
from configs import cifar10_edm, edm_cifar10_ve, edm_cifar10_vp, edm_imagenet64_adm  # noqa: E402
from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax import convert, models, parameterization  # noqa: E402
from diffusion_jax.convert import __main__ as cli  # noqa: E402
from diffusion_jax.convert import edm, networks  # noqa: E402
from diffusion_jax.models import edm_precond  # noqa: E402
from diffusion_jax.objectives import create_objective  # noqa: E402
from diffusion_jax.training import checkpointing  # noqa: E402
from tests.reference_nets import edm_networks as ref  # noqa: E402
from tests.reference_nets.repository import reference_tree  # noqa: E402

FULL = {  # the released checkpoints' constructor kwargs
  'ddpmpp': (
    'EDMPrecond',
    dict(
      img_resolution=32, img_channels=3, label_dim=10, model_type='SongUNet', **cifar10_edm.DDPMPP
    ),
  ),
  'ncsnpp': (
    'EDMPrecond',
    dict(
      img_resolution=32, img_channels=3, label_dim=10, model_type='SongUNet', **cifar10_edm.NCSNPP
    ),
  ),
  'adm': (
    'EDMPrecond',
    dict(
      img_resolution=64,
      img_channels=3,
      label_dim=1000,
      model_type='DhariwalUNet',
      **edm_imagenet64_adm.ADM,
    ),
  ),
}
# From the reference code (training/networks.py, torch meta device): parameters,
# state-dict tensors, sha256 of the sorted 'name:shape' lines.
PUBLISHED = {
  'ddpmpp': (55_735_299, 427, 'd60696f3911461b7d50cf9039a3aed224d841392831c7291773bc08c0f0c2da9'),
  'ncsnpp': (56_400_643, 434, 'bd8f8b7c9aab1c953fdae33e49bde8673ad6778968a104c3fcec33efdec6734d'),
  'adm': (295_899_267, 553, '4575090269ad18e8e85233b1b5f1877746d49eec526f9e795331193272954dee'),
}
SMALL = dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,))
# Reduced width, same structure: each precond, each encoder / decoder / embedding / filter.
CASES = {
  'edm_ddpmpp': ('EDMPrecond', dict(cifar10_edm.DDPMPP, **SMALL)),
  've_ncsnpp': ('VEPrecond', dict(cifar10_edm.NCSNPP, **SMALL)),
  'vp_skip': (
    'VPPrecond',
    dict(
      cifar10_edm.DDPMPP,
      **SMALL,
      augment_dim=0,
      encoder_type='skip',
      decoder_type='skip',
      channel_mult_noise=2,
      resample_filter=(1, 3, 3, 1),
    ),
  ),
  'edm_adm': (
    'EDMPrecond',
    dict(
      edm_imagenet64_adm.ADM,
      model_channels=64,
      channel_mult=(1, 2),
      num_blocks=1,
      attn_resolutions=(8,),
      augment_dim=9,
    ),
  ),
}


@pytest.fixture(autouse=True, scope='module')
def one_torch_thread():
  """Tiny convolutions: one thread is faster than contended ones."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def kwargs_of(case, res=16, label_dim=10):
  precond, network = CASES[case]
  model_type = 'DhariwalUNet' if 'adm' in case else 'SongUNet'
  network = {k: list(v) if isinstance(v, tuple) else v for k, v in network.items()}
  return precond, dict(
    img_resolution=res,
    img_channels=3,
    label_dim=label_dim,
    model_type=model_type,
    use_fp16=False,
    **network,
  )


def randomize(net, seed=0, scale=0.1):
  """Random weights everywhere (no layer left at its zero / 1e-5 init)."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in net.parameters():
      p.add_(scale * torch.randn_like(p))
  return net


def torch_inputs(augment_dim, seed=1):
  g = torch.Generator().manual_seed(seed)
  x = torch.randn(3, 3, 16, 16, generator=g)
  sigma = torch.tensor([0.2, 1.5, 30.0])
  y = torch.nn.functional.one_hot(torch.tensor([1, 5, 9]), 10).float()
  y[2] = 0  # the null label
  aug = torch.randn(3, augment_dim, generator=g) if augment_dim else None
  return x, sigma, y, aug


def np_inputs(x, sigma, y, aug):
  inputs = dict(x_nchw=x.numpy(), sigma=sigma.numpy(), class_labels_onehot=y.numpy())
  if aug is not None:
    inputs['augment_labels'] = aug.numpy()
  return inputs


def max_rel_err(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def layer_list(state_dict):
  lines = sorted(f'{k}:{tuple(v.shape)}' for k, v in state_dict.items())
  return len(lines), hashlib.sha256('\n'.join(lines).encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# The transcription against the reference code.


@pytest.mark.parametrize('name', list(FULL))
def test_transcription_has_the_reference_layer_list_and_parameter_count(name):
  precond, kwargs = FULL[name]
  with torch.device('meta'):
    net = ref.PRECONDS[precond](
      **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    )
  count, tensors, digest = PUBLISHED[name]
  assert sum(p.numel() for p in net.parameters()) == count
  assert layer_list(net.state_dict()) == (tensors, digest)


def test_transcription_and_loader_equal_the_reference_code(tmp_path):
  import copy
  import pickle

  sys.path.insert(0, reference_tree('EDM_REPO', ('training', 'torch_utils', 'dnnlib'), tmp_path))
  try:
    dnnlib = importlib.import_module('dnnlib')
    importlib.import_module('training.networks')
  finally:
    sys.path.pop(0)
  for name, (precond, kwargs) in FULL.items():
    with torch.device('meta'):
      real = dnnlib.util.construct_class_by_name(
        class_name=f'training.networks.{precond}',
        **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
      )
    assert layer_list(real.state_dict()) == PUBLISHED[name][1:]
  for case in CASES:
    precond, kwargs = kwargs_of(case)
    torch.manual_seed(0)
    real = dnnlib.util.construct_class_by_name(class_name=f'training.networks.{precond}', **kwargs)
    real = randomize(real.eval().requires_grad_(False))
    ours = ref.build(precond, **kwargs)
    weights = real.state_dict()
    assert [(k, v.shape) for k, v in weights.items()] == [
      (k, v.shape) for k, v in ours.state_dict().items()
    ]
    ours.load_state_dict(weights)
    x, sigma, y, aug = torch_inputs(kwargs['augment_dim'])
    torch.testing.assert_close(
      ours(x, sigma, y, augment_labels=aug), real(x, sigma, y, augment_labels=aug), rtol=0, atol=0
    )
    # A pickle written by EDM's own persistence module (source embedded) reads as data.
    path = str(tmp_path / f'{case}.pkl')
    with open(path, 'wb') as f:
      pickle.dump(dict(ema=copy.deepcopy(real), loss_fn=None, dataset_kwargs={}), f)
    state_dict, config = edm.load(path)
    assert config == {'precond': precond, **kwargs}
    assert list(state_dict) == list(weights)
    for k, v in weights.items():
      np.testing.assert_array_equal(state_dict[k], v.numpy())


# ---------------------------------------------------------------------------------------
# Our side.


@pytest.mark.parametrize(
  'module,name,extra',
  [(edm_cifar10_vp, 'ddpmpp', 0), (edm_cifar10_ve, 'ncsnpp', 128), (edm_imagenet64_adm, 'adm', 0)],
)
def test_full_size_parameter_counts_equal_the_reference(module, name, extra):
  """DDPM++ 55.74M, NCSN++ 56.40M (plus its 128 Fourier frequencies, a buffer in EDM), ADM
  295.90M; and the converter's settings for the released pickle are the config's network."""
  config = module.get_config()
  run = config_lib.build_run_config(config, num_devices=8)
  params = models.create_model(run.model).param_shapes()
  assert models.count_params(params) == PUBLISHED[name][0] + extra
  precond, kwargs = FULL[name]
  overrides = edm.model_overrides({'precond': precond, **kwargs, 'use_fp16': True})
  assert networks.model_config(overrides).kwargs == run.model.kwargs
  converted = cli.apply_overrides(module.get_config(), overrides)  # as the CLI does
  assert config_lib.build_run_config(converted, num_devices=8).model == run.model
  assert edm.default_config({'precond': precond, **kwargs}) == f'configs/{module.__name__[8:]}.py'


@pytest.mark.parametrize(
  'data,arch,dropout',
  [('ffhq', 'vp', 0.05), ('ffhq', 've', 0.05), ('afhq', 'vp', 0.25), ('afhq', 've', 0.25)],
)
def test_unconditional_64x64_configs_are_the_released_networks(data, arch, dropout):
  """EDM's FFHQ / AFHQv2 64x64 pickles (train.py --cres=1,2,2,2 --dropout=...): the file
  name picks our config, and the converter's settings for it are that config's run."""
  base = cifar10_edm.DDPMPP if arch == 'vp' else cifar10_edm.NCSNPP
  network = {**base, 'channel_mult': [1, 2, 2, 2], 'dropout': dropout}
  kwargs = dict(
    precond='EDMPrecond',
    img_resolution=64,
    img_channels=3,
    label_dim=0,
    model_type='SongUNet',
    **network,
  )
  spec = f'configs/edm_{data}64_{arch}.py'
  released = f'edm-{"afhqv2" if data == "afhq" else data}-64x64-uncond-{arch}.pkl'
  assert edm.default_config(kwargs, released) == spec
  assert edm.default_config(kwargs, 'my-64x64-run.pkl') is None  # then --config is asked for
  run = config_lib.build_run_config(
    config_lib.load_config_file(os.path.join(ROOT, spec)), num_devices=8
  )
  overrides = edm.model_overrides({**kwargs, 'use_fp16': True})
  converted = cli.apply_overrides(config_lib.load_config_file(os.path.join(ROOT, spec)), overrides)
  ours = config_lib.build_run_config(converted, num_devices=8)
  assert (ours.model, ours.diffusion, ours.sample) == (run.model, run.diffusion, run.sample)
  assert run.sample.num_steps == 40 and not run.conditional


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """case -> (state dict, reference config, numpy inputs, torch D(x; sigma)), read from files."""
  out = {}
  root = tmp_path_factory.mktemp('edm')
  for case in CASES:
    precond, kwargs = kwargs_of(case)
    net = randomize(ref.build(precond, **kwargs))
    x, sigma, y, aug = torch_inputs(kwargs['augment_dim'])
    want = net(x, sigma, y, augment_labels=aug).numpy()
    if case == 'vp_skip':  # a state_dict() export with its kwargs beside it
      path = str(root / f'{case}.pt')
      torch.save(net.state_dict(), path)
      with open(str(root / f'{case}.json'), 'w') as f:
        json.dump({'precond': precond, **kwargs}, f)
    else:
      path = str(root / f'{case}.pkl')
      ref.pickle_like_edm(net, path)
    state_dict, config = edm.load(path)
    assert config == {'precond': precond, **kwargs}
    out[case] = (state_dict, config, np_inputs(x, sigma, y, aug), want, net)
  return out


@pytest.mark.parametrize('case', list(CASES))
def test_converted_network_matches_the_reference(converted, case):
  state_dict, config, inputs, want, _ = converted[case]
  got = convert.reference_forward('edm', config, state_dict, inputs)
  assert got.shape == want.shape == (3, 3, 16, 16)
  assert max_rel_err(got, want) < 2e-5, max_rel_err(got, want)
  if case != 'vp_skip':
    return
  # Without labels the reference sees the zero vector; so does ours.
  params = convert.convert_state_dict('edm', config, state_dict)
  bare = {'x_nchw': inputs['x_nchw'], 'sigma': inputs['sigma']}
  zeros = dict(bare, class_labels_onehot=np.zeros((3, 10), np.float32))
  np.testing.assert_allclose(
    edm.forward(params, config, bare), edm.forward(params, config, zeros), rtol=1e-6, atol=1e-6
  )


def test_a_broken_name_or_layer_fails(converted, monkeypatch):
  state_dict, config, inputs, want, net = converted['edm_ddpmpp']
  name = 'model.enc.16x16_block0.conv0.weight'
  renamed = dict(state_dict)
  renamed['model.enc.16x16_block0.conv_0.weight'] = renamed.pop(name)
  with pytest.raises(convert.ConversionError, match=r"no tensor 'model\.enc\.16x16_block0\.conv0"):
    convert.convert_state_dict('edm', config, renamed)
  extra = dict(state_dict, **{'model.enc.16x16_block0.extra': np.zeros(3, np.float32)})
  with pytest.raises(convert.ConversionError, match=r"'model\.enc\.16x16_block0\.extra'"):
    convert.convert_state_dict('edm', config, extra)
  wider = dict(config, model_channels=32)
  with pytest.raises(convert.ConversionError, match=r"tensor 'model\.[\w.]+' has shape \(3, 16,"):
    convert.convert_state_dict('edm', wider, state_dict)
  filt = dict(config, resample_filter=[1, 3, 3, 1])
  with pytest.raises(convert.ConversionError, match=r'resample_filter'):
    convert.convert_state_dict('edm', filt, state_dict)
  # A wrong mapping of same-shaped tensors (conv0 <-> conv1 of one block) changes D.
  swapped = dict(state_dict)
  conv1 = 'model.enc.16x16_block0.conv1.weight'
  swapped[name], swapped[conv1] = state_dict[conv1], state_dict[name]
  assert max_rel_err(convert.reference_forward('edm', config, swapped, inputs), want) > 1e-3
  # A layer computed differently on one side (attention logits without 1 / sqrt(C)) is seen.
  monkeypatch.setattr(
    ref, 'attention_weights', lambda q, k: torch.einsum('ncq,nck->nqk', q, k).softmax(dim=2)
  )
  x, sigma, y, aug = (
    torch.from_numpy(inputs[k])
    for k in ('x_nchw', 'sigma', 'class_labels_onehot', 'augment_labels')
  )
  broken = net(x, sigma, y, augment_labels=aug).numpy()
  got = convert.reference_forward('edm', config, state_dict, inputs)
  assert max_rel_err(got, broken) > 1e-3 and max_rel_err(got, want) < 2e-5


# ---------------------------------------------------------------------------------------
# Preconditionings and the objective.


def test_preconditionings_are_the_references():
  sigma = np.array([0.002, 0.3, 1.0, 80.0], np.float32)
  vp = ref.VPPrecond(
    img_resolution=8,
    img_channels=1,
    model_channels=8,
    channel_mult=[1],
    num_blocks=1,
    attn_resolutions=[],
  )
  s = torch.from_numpy(sigma)
  c_skip, c_out, c_in, c_noise = edm_precond.preconditioning('vp', sigma)
  np.testing.assert_allclose(c_out, -sigma)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + 1), rtol=1e-6)
  np.testing.assert_allclose(c_noise, (999 * vp.sigma_inv(s)).numpy(), rtol=1e-5)
  np.testing.assert_allclose(c_skip, 1.0)
  t = np.array([1e-5, 0.3, 1.0])
  np.testing.assert_allclose(
    edm_precond.vp_sigma(t), vp.sigma(torch.from_numpy(t)).numpy(), rtol=1e-5
  )  # float64 reference
  # sigma_inv keeps the reference's float32 ln(1 + sigma^2): exact enough from t = 1e-3 up.
  t = np.array([1e-3, 0.3, 1.0])
  np.testing.assert_allclose(edm_precond.vp_sigma_inv(edm_precond.vp_sigma(t)), t, rtol=1e-3)
  assert abs(float(edm_precond.vp_sigma(1.0)) - vp.sigma_max) < 1e-3
  c_skip, c_out, c_in, c_noise = edm_precond.preconditioning('ve', sigma)
  np.testing.assert_allclose(c_noise, np.log(sigma / 2), rtol=1e-6)
  np.testing.assert_allclose(c_out, sigma)
  np.testing.assert_allclose(c_in, 1.0)
  for a, b in zip(
    edm_precond.preconditioning('edm', sigma, 0.5), parameterization.edm_preconditioning(sigma, 0.5)
  ):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"config\.diffusion\.precond='idd'"):
    edm_precond.preconditioning('idd', sigma)


@pytest.mark.parametrize('precond', ['edm', 'vp', 've'])
def test_edm_objective_denoises_with_the_configured_preconditioning(precond):
  cfg = config_lib.DiffusionConfig.from_config({'objective': 'edm', 'precond': precond})
  objective = create_objective(cfg)
  seen = {}

  def apply_fn(params, x, noise_level, label=None, self_cond=None, train=False, **kw):
    seen['x'], seen['noise_level'] = x, noise_level
    return jnp.full_like(x, 0.5), None

  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  sigma = jnp.array([0.5, 20.0])
  denoise, _ = objective.denoiser(apply_fn, None, clip_x0=False)
  d = denoise(x, sigma)
  c_skip, c_out, c_in, c_noise = (
    c[:, None, None, None] for c in edm_precond.preconditioning(precond, sigma)
  )
  np.testing.assert_allclose(d, c_skip * x + c_out * 0.5, rtol=1e-6)
  np.testing.assert_allclose(seen['x'], c_in * x, rtol=1e-6)
  np.testing.assert_allclose(seen['noise_level'], 1000 * c_noise.reshape(-1), rtol=1e-6)
  batch = {'image': x, 'label': jnp.array([0, 1])}
  loss, _, _ = objective.loss(apply_fn, None, batch, jax.random.key(1), None, train=False)
  assert np.isfinite(loss)


def test_bad_settings_fail_in_one_line():
  config = edm_cifar10_vp.get_config('tiny')
  run = lambda: config_lib.build_run_config(config, num_devices=8)  # noqa: E731
  build = lambda: models.create_model(run().model)  # noqa: E731
  cases = [
    ('network_kwargs.channels', 7, r"network_kwargs has \['channels'\]"),
    ('network_kwargs.encoder_type', 'fused', r'encoder_type=.fused. must be one of'),
    ('network_kwargs.augment_dim', 3, r'augment_dim=3 differs from config\.model\.augment_dim=9'),
    ('network_kwargs.model_type', 'DhariwalUNet', r'model_type must be .SongUNet.'),
    ('dropout', 0.3, r'config\.model\.dropout=0\.3 differs'),
    ('self_cond', True, r'neither a learned variance nor self-conditioning'),
  ]
  for key, value, pattern in cases:
    config = edm_cifar10_vp.get_config('tiny')
    section = config.model
    *parents, leaf = key.split('.')
    for p in parents:
      section = section[p]
    section[leaf] = value
    with pytest.raises(ValueError, match=pattern):
      build()
  config = edm_cifar10_vp.get_config('tiny')
  config.diffusion.precond = 'iddpm'
  with pytest.raises(ValueError, match=r'config\.diffusion\.precond'):
    run()
  with pytest.raises(ValueError, match='iDDPMPrecond is not supported'):
    edm.model_overrides({'precond': 'iDDPMPrecond', 'img_resolution': 32, 'img_channels': 3})
  with pytest.raises(ValueError, match=r"\['bogus'\]"):
    edm.model_overrides(
      {'precond': 'VPPrecond', 'img_resolution': 32, 'img_channels': 3, 'bogus': 1}
    )


# ---------------------------------------------------------------------------------------
# The CLI into a run directory main.py samples from.


def test_cli_writes_its_own_config_when_only_the_preconditioning_differs(tmp_path, monkeypatch):
  """A VPPrecond pickle of configs/edm_cifar10_vp.py's network (an EDMPrecond run): the
  network matches, the preconditioning does not, so the CLI writes a config with 'vp'."""
  config = edm_cifar10_vp.get_config('tiny')
  kwargs = dict(img_resolution=16, img_channels=3, label_dim=10, model_type='SongUNet')
  net = ref.build('VPPrecond', use_fp16=False, **kwargs, **dict(config.model.network_kwargs))
  source, workdir = str(tmp_path / 'vp-tiny.pkl'), str(tmp_path / 'run')
  ref.pickle_like_edm(randomize(net, scale=0.02), source)
  spec = 'configs/edm_cifar10_vp.py:tiny'
  monkeypatch.chdir(ROOT)
  assert (
    cli.main(['--from=edm', f'--input={source}', f'--workdir={workdir}', f'--config={spec}']) == 0
  )
  record = json.loads(open(os.path.join(workdir, 'convert.json')).read())
  assert not record['config_matches_checkpoint'] and record['config'].endswith('config.py')
  assert config.diffusion.precond == 'edm'
  written = config_lib.load_config_file(record['config'])
  assert written.diffusion.precond == 'vp'
  build = config_lib.build_run_config
  assert build(written, num_devices=8).model == build(config, num_devices=8).model


def test_cli_converts_a_pickle_that_main_samples_with_heun(tmp_path, monkeypatch):
  config = edm_cifar10_vp.get_config('tiny')
  network = dict(config.model.network_kwargs)
  kwargs = dict(
    img_resolution=16,
    img_channels=3,
    label_dim=10,
    model_type='SongUNet',
    use_fp16=False,
    **network,
  )
  net = randomize(ref.build('EDMPrecond', **kwargs), scale=0.02)
  source, workdir = str(tmp_path / 'edm-tiny.pkl'), str(tmp_path / 'run')
  ref.pickle_like_edm(net, source)
  spec = 'configs/edm_cifar10_vp.py:tiny'
  monkeypatch.chdir(ROOT)
  assert (
    cli.main(['--from=edm', f'--input={source}', f'--workdir={workdir}', f'--config={spec}']) == 0
  )
  record = json.loads(open(os.path.join(workdir, 'convert.json')).read())
  assert record['config_matches_checkpoint'] and record['config'] == spec
  state_dict, ref_config = edm.load(source)
  want = convert.convert_state_dict('edm', ref_config, state_dict)
  restored = checkpointing.restore_ema_params(workdir, want)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), want)

  argv = [
    'main.py',
    f'--config={spec}',
    f'--workdir={workdir}',
    '--mode=sample',
    '--compilation_cache_dir=none',
    '--config.sample.num_steps=3',  # EDM's Heun (Algorithm 1), NFE 5
  ]
  monkeypatch.setattr(sys, 'argv', argv)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  main_lib.main(['main.py'])
  samples = np.load(os.path.join(workdir, 'samples', 'edm_heun_step_000000.npz'))
  images = samples['images']
  assert images.shape[0] >= 8 and images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8
  assert len(np.unique(images)) > 10
