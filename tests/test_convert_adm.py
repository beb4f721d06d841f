"""ADM (improved / guided-diffusion UNetModel): our port, the openai_unet converter, parity.

The PyTorch reference is tests/reference_nets/guided_unet.py, a transcription of
guided_diffusion/unet.py. It is checked against the reference code's layer list and
parameter count (recorded from the real code; compared with the real code itself when
the openai repositories are at hand: GUIDED_DIFFUSION_REPO / IMPROVED_DIFFUSION_REPO, a
checkout or bare git mirror).
"""

import hashlib
import importlib
import json
import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import adm_cifar10, adm_imagenet64  # noqa: E402
from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax import convert, models  # noqa: E402
from diffusion_jax.convert import openai_unet  # noqa: E402
from diffusion_jax.training import checkpointing  # noqa: E402
from tests.reference_nets import guided_unet  # noqa: E402
from tests.reference_nets.repository import reference_tree  # noqa: E402

# The README flags of the released checkpoints, as create_model keywords.
IMAGENET64 = dict(
  image_size=64,
  num_channels=192,
  num_res_blocks=3,
  learn_sigma=True,
  class_cond=True,
  attention_resolutions='32,16,8',
  num_head_channels=64,
  resblock_updown=True,
  use_new_attention_order=True,
  use_scale_shift_norm=True,
  dropout=0.1,
)
CIFAR10 = dict(  # improved-diffusion's create_model defaults plus the README flags.
  image_size=32,
  num_channels=128,
  num_res_blocks=3,
  learn_sigma=True,
  class_cond=False,
  attention_resolutions='16,8',
  num_heads=4,
  use_scale_shift_norm=True,
  dropout=0.3,
)
# From the reference code (guided_diffusion / improved_diffusion script_util.create_model):
# parameters, state-dict tensors, sha256 of the sorted 'name:shape' lines.
PUBLISHED = {
  'imagenet64': (
    295_904_454,
    541,
    'c64d29bfa6a2c3d011136c6175d4da57d79b9d35c8801880d6693e8622eccd2d',
  ),
  'cifar10': (
    52_546_438,
    446,
    '390d473d399ef711e0a49f16b7f55ab8dfde98084f2b0e175de3797907ccf7f3',
  ),
}
FLAGS = {'imagenet64': IMAGENET64, 'cifar10': CIFAR10}
CONFIGS = {'imagenet64': adm_imagenet64, 'cifar10': adm_cifar10}

# Reduced width, same structure. 'guided': class-conditional, learned sigma, heads of 16
# channels in the new order, resampling residual blocks, scale-shift norm. 'improved':
# legacy attention with num_heads != num_heads_upsample, conv resampling, additive
# embedding, two blocks per level.
TINY = {
  'guided': dict(
    image_size=16,
    num_channels=32,
    num_res_blocks=1,
    channel_mult='1,2',
    learn_sigma=True,
    class_cond=True,
    attention_resolutions='16,8',
    num_head_channels=16,
    resblock_updown=True,
    use_new_attention_order=True,
    use_scale_shift_norm=True,
  ),
  'improved': dict(
    image_size=16,
    num_channels=32,
    num_res_blocks=2,
    channel_mult='1,2',
    attention_resolutions='8',
    num_heads=2,
    num_heads_upsample=4,
    use_scale_shift_norm=False,
  ),
}


def layer_list(state_dict):
  return {k: tuple(v.shape) for k, v in state_dict.items()}


def digest(layers):
  lines = '\n'.join(f'{k}:{v}' for k, v in sorted(layers.items()))
  return hashlib.sha256(lines.encode()).hexdigest()


def meta_model(create, flags):
  with torch.device('meta'):
    return create(**flags)


def random_state_dict(model, seed=0):
  """Every tensor random (zero-initialised layers too), GroupNorm scales around 1."""
  gen = torch.Generator().manual_seed(seed)
  out = {}
  for name, value in model.state_dict().items():
    noise = torch.randn(value.shape, generator=gen) * 0.1
    out[name] = noise + (1.0 if 'norm' in name and name.endswith('weight') else 0.0)
  return out


@pytest.mark.parametrize('name', ['imagenet64', 'cifar10'])
def test_transcription_has_the_reference_layer_list_and_count(name):
  model = meta_model(guided_unet.create_model, FLAGS[name])
  layers = layer_list(model.state_dict())
  count = sum(p.numel() for p in model.parameters())
  assert (count, len(layers), digest(layers)) == PUBLISHED[name]


@pytest.mark.parametrize('name', ['imagenet64', 'cifar10'])
def test_our_network_maps_onto_every_reference_tensor(name):
  run = config_lib.build_run_config(CONFIGS[name].get_config(), num_devices=8)
  abstract = models.create_model(run.model).param_shapes()
  assert models.count_params(abstract) == PUBLISHED[name][0]
  ours = {}
  for key_path, spec in jax.tree_util.tree_flatten_with_path(abstract['params'])[0]:
    path = tuple(str(k.key) for k in key_path)
    ours[openai_unet.torch_name(path)] = openai_unet.reference_layout(path, tuple(spec.shape))
  assert ours == layer_list(meta_model(guided_unet.create_model, FLAGS[name]).state_dict())
  # The config's network_kwargs are the README flags of the released file, resolved.
  released = {'imagenet64': '64x64_diffusion.pt', 'cifar10': 'cifar10_uncond_50M_500K.pt'}[name]
  flags = openai_unet.RELEASED[released]
  assert openai_unet.network_kwargs(flags) == dict(CONFIGS[name].get_config().model.network_kwargs)
  assert openai_unet.default_config({}, f'/downloads/{released}') == f'configs/adm_{name}.py'


@pytest.mark.parametrize(
  'package,env,flags,tiny',
  [
    (
      'guided_diffusion',
      'GUIDED_DIFFUSION_REPO',
      IMAGENET64,
      'guided',
    ),
    (
      'improved_diffusion',
      'IMPROVED_DIFFUSION_REPO',
      CIFAR10,
      'improved',
    ),
  ],
)
def test_transcription_equals_the_reference_code(package, env, flags, tiny, tmp_path):
  sys.path.insert(0, reference_tree(env, (package,), tmp_path))
  try:
    script_util = importlib.import_module(f'{package}.script_util')
  finally:
    sys.path.pop(0)
  create = script_util.create_model
  if package == 'improved_diffusion':  # a narrower create_model: no defaults, fewer flags.
    base = dict(class_cond=False, learn_sigma=False, use_checkpoint=False, num_heads_upsample=-1)
    base.update(dropout=0.0, attention_resolutions='16', num_heads=1, use_scale_shift_norm=False)
    real = lambda **kw: create(**{**base, **kw})  # noqa: E731
  else:
    real = create
  ours = meta_model(guided_unet.create_model, flags)
  assert layer_list(meta_model(real, flags).state_dict()) == layer_list(ours.state_dict())

  small = dict(TINY[tiny])
  if package == 'improved_diffusion':  # no channel_mult flag: its 32x32 table at width 32.
    small.pop('channel_mult')
    small['image_size'] = 32
  a, b = real(**small).eval(), guided_unet.create_model(**small).eval()
  weights = random_state_dict(a)
  a.load_state_dict(weights)
  b.load_state_dict(weights)
  x = torch.randn(2, 3, small['image_size'], small['image_size'])
  t = torch.tensor([3.0, 700.0])
  y = torch.tensor([5, 999]) if small.get('class_cond') else None
  with torch.no_grad():
    # improved-diffusion spells SiLU as x * sigmoid(x): equal to float32 rounding.
    torch.testing.assert_close(a(x, t, y), b(x, t, y), rtol=1e-5, atol=1e-5)


def _torch_reference(flags, weights, x, t, labels):
  """UNetModel(x, t, y) with our null label (-1) as the same network without classes."""
  model = guided_unet.create_model(**flags).eval()
  model.load_state_dict(weights)
  with torch.no_grad():
    if not flags.get('class_cond'):
      return model(x, t).numpy()
    out = model(x, t, labels.clamp(min=0)).numpy()
    uncond = guided_unet.create_model(**{**flags, 'class_cond': False}).eval()
    uncond.load_state_dict({k: v for k, v in weights.items() if k != 'label_emb.weight'})
    null = (labels < 0).numpy()
    out[null] = uncond(x, t).numpy()[null]
  return out


@pytest.mark.parametrize('tiny', ['guided', 'improved'])
def test_converted_checkpoint_matches_the_reference(tiny, tmp_path):
  flags = TINY[tiny]
  model = guided_unet.create_model(**flags)
  weights = random_state_dict(model, seed=1)
  path = str(tmp_path / 'model.pt')
  torch.save(weights, path)
  with open(tmp_path / 'model.json', 'w') as f:
    json.dump({k: str(v) for k, v in flags.items()}, f)  # README-style string values

  fmt = convert.get_format('openai_unet')
  state_dict, found = fmt.load(path)
  assert openai_unet.network_kwargs(found) == openai_unet.network_kwargs(flags)
  gen = torch.Generator().manual_seed(2)
  x = torch.randn(4, 3, 16, 16, generator=gen)
  t = torch.tensor([0.0, 17.5, 999.0, 250.0])
  labels = torch.tensor([3, 999, -1, 0])
  inputs = {'x_nchw': x.numpy(), 'timesteps': t.numpy()}
  if flags.get('class_cond'):
    inputs['labels'] = labels.numpy()
  out = convert.reference_forward('openai_unet', found, state_dict, inputs)
  ref = _torch_reference(flags, weights, x, t, labels)
  assert out.shape == ref.shape == (4, 6 if flags.get('learn_sigma') else 3, 16, 16)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)


def test_conversion_names_the_first_bad_tensor():
  flags = TINY['guided']
  weights = {k: v.numpy() for k, v in random_state_dict(guided_unet.create_model(**flags)).items()}
  renamed = dict(weights)
  renamed['input_blocks.1.1.qkv.weight_'] = renamed.pop('input_blocks.1.1.qkv.weight')
  with pytest.raises(convert.ConversionError, match=r"no tensor 'input_blocks\.1\.1\.qkv\.weight'"):
    convert.convert_state_dict('openai_unet', flags, renamed)
  extra = {**weights, 'output_blocks.9.0.in_layers.0.weight': np.ones(32, np.float32)}
  with pytest.raises(convert.ConversionError, match=r"first 'output_blocks\.9\.0\.in_layers"):
    convert.convert_state_dict('openai_unet', flags, extra)
  wrong = {**weights, 'out.2.weight': np.zeros((6, 32, 1, 1), np.float32)}
  with pytest.raises(convert.ConversionError, match=r"'out\.2\.weight' has shape \(6, 32, 1, 1\)"):
    convert.convert_state_dict('openai_unet', flags, wrong)


@pytest.mark.parametrize(
  'kwargs,match',
  [
    ({'use_fp16': True}, 'use_fp16=True is not supported'),
    ({'attention_resolutions': (4,)}, 'never reaches'),
    ({'num_channels': 48}, 'multiple of the 32 GroupNorm groups'),
    ({'num_head_channels': 24}, 'num_head_channels=24 must divide'),
    ({'learn_sigma': False}, 'learn_sigma=False disagrees'),
    ({'diffusion_steps': 1000}, 'unknown key'),
    ({'num_res_blocks': None}, 'num_res_blocks is required'),
  ],
)
def test_bad_network_kwargs_fail_in_one_line(kwargs, match):
  config = adm_imagenet64.get_config('tiny')
  for key, value in kwargs.items():
    config.model.network_kwargs[key] = value
  with pytest.raises(ValueError, match=match) as info:
    models.create_model(config_lib.build_run_config(config, num_devices=8).model)
  assert '\n' not in str(info.value)


def _torch_flags(kwargs):
  """create_model keywords as the reference's command line gives them (comma lists)."""
  out = dict(kwargs)
  for key in ('channel_mult', 'attention_resolutions'):
    out[key] = ','.join(str(v) for v in out[key])
  out.pop('use_fp16')
  out.pop('use_checkpoint')
  return out


def test_converted_checkpoint_samples_through_main(tmp_path, monkeypatch):
  """The CLI's run directory samples with the paper's sampler (ancestral, learned sigma)."""
  from absl import flags as absl_flags

  import main as main_lib
  from diffusion_jax.convert import __main__ as cli

  flags = _torch_flags(adm_cifar10.get_config('tiny').model.network_kwargs)
  path = str(tmp_path / 'tiny.pt')
  torch.save(random_state_dict(guided_unet.create_model(**flags), seed=3), path)
  with open(tmp_path / 'tiny.json', 'w') as f:
    json.dump(flags, f)
  workdir = str(tmp_path / 'run')
  config = f'{ROOT}/configs/adm_cifar10.py:tiny'
  argv = ['--from=openai_unet', f'--input={path}', f'--workdir={workdir}', f'--config={config}']
  assert cli.main(argv) == 0
  with open(os.path.join(workdir, 'convert.json')) as f:
    record = json.load(f)
  assert record['config_matches_checkpoint']

  argv = ['main.py', f'--config={config}', f'--workdir={workdir}', '--mode=sample']
  argv += ['--compilation_cache_dir=none']
  monkeypatch.setattr(sys, 'argv', argv)
  absl_flags.FLAGS.unparse_flags()
  absl_flags.FLAGS(argv)
  main_lib.main(['main.py'])
  samples = np.load(os.path.join(workdir, 'samples', 'ddpm_step_000000.npz'))
  images = samples['images']
  assert images.shape == (8, 16, 16, 3) and images.dtype == np.uint8
  assert len(np.unique(images)) > 10  # not a constant image


def test_cli_takes_the_flags_from_the_config_for_a_bare_state_dict(tmp_path):
  """A .pt with no flags beside it and an unknown name converts under --config=adm_*.py,
  whose network_kwargs are the create_model flags; without --config it names both fixes."""
  from diffusion_jax.convert import __main__ as cli

  kwargs = dict(adm_cifar10.get_config('tiny').model.network_kwargs)
  state_dict = random_state_dict(guided_unet.create_model(**_torch_flags(kwargs)), seed=4)
  path = str(tmp_path / 'my_run.pt')
  torch.save(state_dict, path)
  with pytest.raises(ValueError, match='--reference_config=FILE or a --config=configs/X.py'):
    cli.convert('openai_unet', path, str(tmp_path / 'none'))
  record = cli.convert(
    'openai_unet', path, str(tmp_path / 'run'), f'{ROOT}/configs/adm_cifar10.py:tiny'
  )
  assert record['config_matches_checkpoint']
  numpy_dict = {k: v.numpy() for k, v in state_dict.items()}
  want = convert.convert_state_dict('openai_unet', _torch_flags(kwargs), numpy_dict)
  restored = checkpointing.restore_ema_params(str(tmp_path / 'run'), want)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), want)
