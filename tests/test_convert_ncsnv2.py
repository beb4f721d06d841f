"""NCSNv2's RefineNets (ncsnv2): our port, the ncsnv2 checkpoint converter, parity.

The PyTorch reference is tests/reference_nets/ncsnv2.py, a transcription of
ermongroup/ncsnv2's models/ncsnv2.py, layers.py and normalization.py. It is checked
against the reference code's layer list and parameter count (recorded from the real code;
compared with the real code itself, names, shapes and outputs, when the repository is at
hand: NCSNV2_REPO, a checkout or bare git mirror). Reduced-width networks of the three
structures with random weights are saved in the reference's checkpoint layout, converted
and compared with PyTorch; a converted one samples through main.py.
"""

import argparse
import hashlib
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags

torch = pytest.importorskip('torch')
yaml = pytest.importorskip('yaml')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as main_lib  # noqa: E402
from configs import cifar10_ncsnv2, ncsnv2_cifar10  # noqa: E402
from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax import convert, models  # noqa: E402
from diffusion_jax.convert import __main__ as cli  # noqa: E402
from diffusion_jax.convert import ncsnv2  # noqa: E402
from diffusion_jax.objectives import create_objective  # noqa: E402
from diffusion_jax.training import checkpointing  # noqa: E402
from tests.reference_nets import ncsnv2 as reference  # noqa: E402
from tests.reference_nets.repository import reference_tree  # noqa: E402

REPO_ENV = 'NCSNV2_REPO'  # the reference repository, when at hand (reference_nets/repository.py)
# From the reference code (models/ncsnv2.py at ngf = 128, the published configs):
# parameters, state-dict tensors (the sigmas buffer included), sha256 of 'name:shape' lines.
PUBLISHED = {
  'NCSNv2': (
    29_694_083,
    154,
    '859b07285f5875893b0f4b22262286acc9ba178027426e2ed44f25c2af7a93c8',
  ),
  'NCSNv2Deeper': (
    83_445_379,
    192,
    '6c6087e80296f2906321b3ceb7f11ff8e36aeb6219af582ec270f48ed0e997e2',
  ),
  'NCSNv2Deepest': (
    94_132_611,
    230,
    'af9b782cab7dd693d354d472d9108feb47311d063a0007282de779920fa5e94e',
  ),
}
FULL = {'NCSNv2': ('CIFAR10', 32), 'NCSNv2Deeper': ('LSUN', 128), 'NCSNv2Deepest': ('FFHQ', 256)}
# Reduced width, same structure; sizes where every refine block upsamples (or not) as in
# the published ones: 8 -> 4 (NCSNv2), 16 -> 8 -> 4 (Deeper), 16 -> 8 -> 4 -> 2 (Deepest).
TINY = {'NCSNv2': ('CIFAR10', 8), 'NCSNv2Deeper': ('LSUN', 16), 'NCSNv2Deepest': ('FFHQ', 16)}


# The published runs (the reference's configs/<name>.yml): data set, LSUN category, image
# size, sigma_begin, num_classes, step_lr, n_steps_each.
PUBLISHED_RUNS = {
  'cifar10': ('CIFAR10', None, 32, 50, 232, 6.2e-6, 5),
  'celeba': ('CELEBA', None, 64, 90, 500, 3.3e-6, 5),
  'church': ('LSUN', 'church_outdoor', 64, 140, 788, 4.9e-6, 4),
  'bedroom': ('LSUN', 'bedroom', 128, 190, 1086, 1.8e-6, 3),
  'tower': ('LSUN', 'tower', 128, 190, 1086, 1.8e-6, 3),
  'ffhq': ('FFHQ', None, 256, 348, 2311, 9e-7, 3),
}


def published_yml(name):
  dataset, category, size, sigma_begin, levels, step_lr, steps = PUBLISHED_RUNS[name]
  config = yml(dataset, size, 128, levels, sigma_begin, step_lr=step_lr, n_steps_each=steps)
  if category:
    config['data']['category'] = category
  return config


def yml(dataset, size, ngf=4, levels=7, sigma_begin=5.0, **sampling):
  """A reference config (configs/*.yml's sections) for a data set's network."""
  return {
    'data': {
      'dataset': dataset,
      'image_size': size,
      'channels': 3,
      'logit_transform': False,
      'uniform_dequantization': False,
      'rescaled': False,
    },
    'model': {
      'sigma_begin': sigma_begin,
      'num_classes': levels,
      'ema': True,
      'ema_rate': 0.999,
      'spec_norm': False,
      'sigma_dist': 'geometric',
      'sigma_end': 0.01,
      'normalization': 'InstanceNorm++',
      'nonlinearity': 'elu',
      'ngf': ngf,
    },
    'sampling': {'step_lr': 6.2e-6, 'n_steps_each': 5, 'denoise': True, **sampling},
  }


def layer_list(state_dict):
  return {k: tuple(v.shape) for k, v in state_dict.items()}


def digest(layers):
  lines = '\n'.join(f'{k}:{v}' for k, v in sorted(layers.items()))
  return hashlib.sha256(lines.encode()).hexdigest()


def meta_network(networks, arch, config):
  with torch.device('meta'):
    return networks[arch](reference.namespace({**config, 'device': 'meta'}))


def randomize(model, seed=0):
  """Random weights: torch's init, InstanceNorm++ alpha / gamma / beta spread out."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(('.alpha', '.gamma')):
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      elif name.endswith('.beta'):
        p.copy_(0.3 * torch.randn_like(p))
  return model.eval()


def save_run(directory, config, model, ema=None):
  """runners/ncsn_runner.py's checkpoint.pth ([DataParallel state, optimizer, epoch, step,
  EMA shadow]) and main.py's config.yml (a dumped argparse.Namespace) in `directory`."""
  os.makedirs(directory, exist_ok=True)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
  states = [
    {f'module.{k}': v for k, v in model.state_dict().items()},
    optimizer.state_dict(),
    3,
    1000,
  ]
  if ema is not None:
    states.append(ema)
  torch.save(states, os.path.join(directory, 'checkpoint.pth'))

  def to_namespace(values):
    return argparse.Namespace(
      **{k: to_namespace(v) if isinstance(v, dict) else v for k, v in values.items()}
    )

  with open(os.path.join(directory, 'config.yml'), 'w') as f:
    yaml.dump(to_namespace(config), f, default_flow_style=False)
  return os.path.join(directory, 'checkpoint.pth')


def shifted_ema(model, seed=1):
  """An EMA shadow that differs from the raw weights (so the choice is visible)."""
  gen = torch.Generator().manual_seed(seed)
  shadow = reference.ema_state_dict(model)
  return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in shadow.items()}


@pytest.mark.parametrize('arch', list(PUBLISHED))
def test_transcription_has_the_reference_layer_list_and_count(arch):
  dataset, size = FULL[arch]
  model = meta_network(reference.NETWORKS, arch, yml(dataset, size, ngf=128, levels=232))
  count, tensors, sha = PUBLISHED[arch]
  assert sum(p.numel() for p in model.parameters()) == count
  assert len(model.state_dict()) == tensors
  assert digest(layer_list(model.state_dict())) == sha


def test_full_size_parameter_count_is_the_papers():
  """Ours, traced only (eval_shape): NCSNv2 CIFAR-10 29.69M as the reference's."""
  run = config_lib.build_run_config(ncsnv2_cifar10.get_config(), num_devices=8)
  assert run.model.name == 'ncsnv2' and run.model.kwargs['model']['ngf'] == 128
  n = models.count_params(models.create_model(run.model).param_shapes())
  assert n == PUBLISHED['NCSNv2'][0]


def test_transcription_equals_the_reference_code(tmp_path):
  sys.path.insert(0, reference_tree(REPO_ENV, ('models',), tmp_path))
  saved = {k: v for k, v in sys.modules.items() if k == 'models' or k.startswith('models.')}
  try:
    for k in saved:
      del sys.modules[k]
    real = importlib.import_module('models.ncsnv2')
  finally:
    sys.path.pop(0)
    for k in [k for k in sys.modules if k == 'models' or k.startswith('models.')]:
      del sys.modules[k]
    sys.modules.update(saved)
  networks = {arch: getattr(real, arch) for arch in PUBLISHED}
  for arch, (dataset, size) in FULL.items():
    config = yml(dataset, size, ngf=128, levels=232)
    want = meta_network(networks, arch, config)
    got = meta_network(reference.NETWORKS, arch, config)
    assert layer_list(want.state_dict()) == layer_list(got.state_dict())
  for arch, (dataset, size) in TINY.items():
    config = reference.namespace({**yml(dataset, size), 'device': 'cpu'})
    a, b = randomize(networks[arch](config)), reference.NETWORKS[arch](config).eval()
    b.load_state_dict(a.state_dict())
    x, y = torch.rand(2, 3, size, size), torch.tensor([0, 6])
    with torch.no_grad():
      torch.testing.assert_close(a(x, y), b(x, y), rtol=0, atol=0)


@pytest.mark.parametrize('arch', list(TINY))
def test_converted_checkpoint_matches_the_reference(arch, tmp_path):
  dataset, size = TINY[arch]
  config = yml(dataset, size)
  model = randomize(reference.NETWORKS[arch](reference.namespace(config)))
  ema = shifted_ema(model)
  path = save_run(str(tmp_path / 'run'), config, model, ema)
  state_dict, found = convert.get_format('ncsnv2').load(str(tmp_path / 'run'))  # the directory
  assert found['data'] == config['data'] and found['model'] == config['model']
  model.load_state_dict({**model.state_dict(), **ema})  # the reference samples with EMA
  gen = torch.Generator().manual_seed(2)
  x = torch.rand(4, 3, size, size, generator=gen)
  y = torch.tensor([0, 3, 6, 6])
  with torch.no_grad():
    want = model(x, y).numpy()
  inputs = {'x_nchw_01': x.numpy(), 'sigma_index': y.numpy()}
  got = convert.reference_forward('ncsnv2', found, state_dict, inputs)
  assert got.shape == want.shape == (4, 3, size, size)
  scale = np.abs(want).max()
  np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=0)
  assert not np.allclose(want[2], want[3])  # two images, the same level: the input matters

  if arch == 'NCSNv2':
    # The raw weights on request; and a wrong mapping (two same-shaped tensors swapped)
    # changes the output far beyond the tolerance above.
    raw, _ = ncsnv2.load_checkpoint(path, use_ema=False)
    torch_raw = {k[len('module.') :]: v.numpy() for k, v in torch.load(path)[0].items()}
    assert raw.keys() == torch_raw.keys()
    for k in raw:
      np.testing.assert_array_equal(raw[k], torch_raw[k])
    assert not np.array_equal(raw['res1.0.conv1.weight'], state_dict['res1.0.conv1.weight'])
    swapped = dict(state_dict)
    a, b = 'res1.0.conv1.weight', 'res1.0.conv2.weight'
    swapped[a], swapped[b] = state_dict[b], state_dict[a]
    wrong = convert.reference_forward('ncsnv2', found, swapped, inputs)
    assert np.abs(wrong - want).max() > 100 * 2e-5 * scale


@pytest.mark.parametrize('name', list(PUBLISHED_RUNS))
def test_published_configs_are_our_configs(name, tmp_path):
  """Each published run's yml (the reference's own file when NCSNV2_REPO is at hand)
  converts to our config of that checkpoint exactly: network, ladder and sampler."""
  ref = published_yml(name)
  if os.path.isdir(os.environ.get(REPO_ENV, '')):
    root = reference_tree(REPO_ENV, (f'configs/{name}.yml',), tmp_path)
    real = ncsnv2.read_config(os.path.join(root, 'configs', f'{name}.yml'))
    for section in ('data', 'model'):
      assert {k: real[section].get(k) for k in ref[section]} == ref[section]
    for key in ('step_lr', 'n_steps_each'):
      assert real['sampling'][key] == ref['sampling'][key]
    ref = real
  spec = ncsnv2.default_config(ref)
  assert spec == f'configs/ncsnv2_{name}.py'
  base = config_lib.load_config_file(os.path.join(ROOT, spec))
  converted = cli.apply_overrides(
    config_lib.load_config_file(os.path.join(ROOT, spec)), ncsnv2.model_overrides(ref)
  )
  ours = config_lib.build_run_config(base, num_devices=8)
  theirs = config_lib.build_run_config(converted, num_devices=8)
  assert (theirs.model, theirs.diffusion, theirs.sample) == (
    ours.model,
    ours.diffusion,
    ours.sample,
  )


def test_objective_scores_are_the_references(tmp_path):
  """Our ncsn objective with the converted network: D(x; sigma_i) = x + sigma_i^2 s(x, i),
  s the reference's score, in the network's [0, 1] units (pipeline x = 2 x_net - 1)."""
  config = yml('CIFAR10', 8)
  model = randomize(reference.NETWORKS['NCSNv2'](reference.namespace(config)))
  state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
  params = convert.convert_state_dict('ncsnv2', config, state_dict)
  run_config = cifar10_ncsnv2.get_config()
  for section, values in ncsnv2.model_overrides(config).items():
    for key, value in values.items():
      run_config[section][key] = value
  run = config_lib.build_run_config(run_config, num_devices=8)
  objective = create_objective(run.diffusion, run.model)
  np.testing.assert_allclose(objective.sigmas, ncsnv2.sigmas(config), rtol=1e-6)
  net = models.create_model(run.model)
  x01 = np.random.RandomState(0).rand(2, 8, 8, 3).astype(np.float32)
  level = np.array([1, 5])
  sigma_net = ncsnv2.sigmas(config)[level]
  denoise_fn, _ = objective.denoiser(net.apply, params, clip_x0=False)
  denoised = denoise_fn(jnp.asarray(2 * x01 - 1), jnp.asarray(sigma_net / 0.5))  # pipeline units
  with torch.no_grad():
    score = model(torch.from_numpy(x01.transpose(0, 3, 1, 2)), torch.from_numpy(level)).numpy()
  want = x01 + sigma_net[:, None, None, None] ** 2 * score.transpose(0, 2, 3, 1)
  np.testing.assert_allclose((np.asarray(denoised) + 1) / 2, want, atol=1e-4, rtol=0)


def test_conversion_names_the_first_bad_tensor():
  config = yml('CIFAR10', 8)
  model = reference.NETWORKS['NCSNv2'](reference.namespace(config))
  weights = {k: v.numpy() for k, v in model.state_dict().items()}
  renamed = dict(weights)
  renamed['refine2.msf.convs.1.weight_'] = renamed.pop('refine2.msf.convs.1.weight')
  with pytest.raises(convert.ConversionError, match=r"no tensor 'refine2\.msf\.convs\.1\.weight'"):
    convert.convert_state_dict('ncsnv2', config, renamed)
  extra = {**weights, 'res5.0.conv1.weight': np.ones((4, 4, 3, 3), np.float32)}
  with pytest.raises(convert.ConversionError, match=r"first 'res5\.0\.conv1\.weight'"):
    convert.convert_state_dict('ncsnv2', config, extra)
  wrong = {**weights, 'end_conv.weight': np.zeros((3, 8, 3, 3), np.float32)}
  with pytest.raises(convert.ConversionError, match=r"'end_conv\.weight' has shape \(3, 8, 3, 3\)"):
    convert.convert_state_dict('ncsnv2', config, wrong)
  ladder = {**config, 'model': {**config['model'], 'sigma_begin': 6.0}}
  with pytest.raises(convert.ConversionError, match=r"'sigmas'.*not the config's ladder"):
    convert.convert_state_dict('ncsnv2', ladder, weights)


@pytest.mark.parametrize(
  'section,key,value,match',
  [
    ('model', 'normalization', 'BatchNorm', "NCSNv2 uses 'InstanceNorm\\+\\+'"),
    ('model', 'ngf', 0, 'must be a positive int'),
    ('model', 'nonlinearity', 'gelu', 'must be one of'),
    ('model', 'spec_norm', True, 'spectral norm is not ported'),
    ('model', 'arch', 'NCSNv3', 'must be one of'),
    ('model', 'sigma_begin', 50, 'set config.diffusion.sigma_max instead'),
    ('model', 'width', 3, "unknown key 'width'"),
    ('data', 'image_size', 64, 'must equal config.data.image_size=32'),
    ('data', 'rescaled', 'no', 'must be True or False'),
  ],
)
def test_bad_network_kwargs_fail_in_one_line(section, key, value, match):
  config = cifar10_ncsnv2.get_config()
  kwargs = config.model.network_kwargs.to_dict()
  kwargs[section][key] = value
  config.model.network_kwargs = ml_collections.ConfigDict(kwargs)
  with pytest.raises(ValueError, match=match) as info:
    models.create_model(config_lib.build_run_config(config, num_devices=8).model)
  assert '\n' not in str(info.value)


def test_cli_writes_a_checkpoint_main_samples_from(tmp_path, monkeypatch):
  """A converted tiny CIFAR-10 run samples with annealed Langevin dynamics (3 levels, 1
  step each, the final denoising) through main.py --mode=sample."""
  config = yml('CIFAR10', 8, levels=3, sigma_begin=1.0, n_steps_each=1, step_lr=1e-5)
  model = randomize(reference.NETWORKS['NCSNv2'](reference.namespace(config)))
  source, workdir = str(tmp_path / 'exp' / 'logs' / 'cifar10'), str(tmp_path / 'run')
  save_run(source, config, model, shifted_ema(model))
  assert cli.main(['--from=ncsnv2', f'--input={source}', f'--workdir={workdir}']) == 0
  record = convert_record(workdir)
  assert record['base_config'] == 'configs/ncsnv2_cifar10.py'
  assert not record['config_matches_checkpoint'] and record['config'].endswith('config.py')
  state_dict, found = ncsnv2.load(source)
  want = convert.convert_state_dict('ncsnv2', found, state_dict)
  restored = checkpointing.restore_ema_params(workdir, want)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), want)

  argv = [
    'main.py',
    f'--config={record["config"]}',
    f'--workdir={workdir}',
    '--mode=sample',
    '--compilation_cache_dir=none',
    '--config.sample.num_samples=4',
    '--config.sample.batch_size=4',
  ]
  monkeypatch.setattr(sys, 'argv', argv)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  run = config_lib.build_run_config(flags.FLAGS.config)
  assert (run.diffusion.num_levels, run.sample.n_steps_each, run.sample.sampler) == (
    3,
    1,
    'langevin',
  )
  main_lib.main(['main.py'])
  images = np.load(os.path.join(workdir, 'samples', 'langevin_step_000000.npz'))['images']
  assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8
  assert len(np.unique(images)) > 10


def convert_record(workdir):
  import json

  with open(os.path.join(workdir, 'convert.json')) as f:
    return json.load(f)


def test_help_lists_the_format(capsys):
  with pytest.raises(SystemExit):
    cli.parse_args(['--help'])
  assert 'ncsnv2' in capsys.readouterr().out


def test_the_network_is_unconditional():
  config = cifar10_ncsnv2.get_config()
  config.model.class_conditional = True
  with pytest.raises(ValueError, match='NCSNv2 is unconditional'):
    models.create_model(config_lib.build_run_config(config, num_devices=8).model)
