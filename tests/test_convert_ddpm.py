"""DDPM's U-Net (ddpm_unet) against diffusers' UNet2DModel, and the diffusers_unet2d converter.

The reference is diffusers itself (the `convert` extra): random weights in the
google/ddpm-cifar10-32 structure at reduced width, written with save_pretrained, read back
by the format, compared output for output; the full-size parameter count; the CLI into a
run directory that main.py --mode=sample restores.
"""

import inspect
import json
import os
import sys

import jax
import numpy as np
import pytest
from absl import flags

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as main_lib  # noqa: E402
from configs import ddpm_celebahq256, ddpm_cifar10  # noqa: E402
from diffusion_jax import build as build_lib  # noqa: E402
from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax import convert, models  # noqa: E402
from diffusion_jax.convert import __main__ as cli  # noqa: E402
from diffusion_jax.convert import diffusers_unet2d, networks  # noqa: E402
from diffusion_jax.models import ddpm_unet  # noqa: E402
from diffusion_jax.training import checkpointing  # noqa: E402

# google/ddpm-cifar10-32 at a quarter of its width (same blocks, attention, groups, padding).
REDUCED = {**ddpm_cifar10.NETWORK, 'block_out_channels': (32, 64, 64, 64)}
# Two levels for the CLI round trip (compiles in seconds).
TINY = {
  **ddpm_cifar10.NETWORK,
  'block_out_channels': (32, 32),
  'down_block_types': ('AttnDownBlock2D', 'DownBlock2D'),
  'up_block_types': ('UpBlock2D', 'AttnUpBlock2D'),
  'layers_per_block': 1,
  'norm_num_groups': 8,
}


def torch_unet(network, seed=0, scale=0.05):
  """A diffusers UNet2DModel with random weights (perturbed so no layer is a zero init)."""
  torch.manual_seed(seed)
  model = diffusers.UNet2DModel(**network).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn_like(p))
  return model


@pytest.fixture(scope='module')
def reduced(tmp_path_factory):
  """(saved directory, torch model, inputs, torch .sample) for the reduced CIFAR-10 network."""
  model = torch_unet(REDUCED)
  path = str(tmp_path_factory.mktemp('ddpm_reduced'))
  model.save_pretrained(path)
  rng = np.random.RandomState(0)
  x = rng.randn(4, 3, 32, 32).astype(np.float32)
  t = np.array([0, 1, 500, 999])
  with torch.no_grad():
    want = model(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
  return path, model, {'x_nchw': x, 'timesteps': t}, want


def test_converted_checkpoint_matches_diffusers(reduced):
  path, _, inputs, want = reduced
  state_dict, config = diffusers_unet2d.load(path)
  assert config['_class_name'] == 'UNet2DModel'
  got = convert.reference_forward('diffusers_unet2d', config, state_dict, inputs)
  assert got.shape == want.shape == (4, 3, 32, 32)
  scale = np.abs(want).max()
  assert scale > 0.5  # the output depends on every layer (no zero-initialised branch)
  np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=0)
  # Each timestep is its own output: the embedding is wired in.
  assert np.abs(want[0] - want[3]).max() > 100 * 2e-5 * scale


def test_bin_files_and_pre_0_15_attention_names_convert_the_same(reduced, tmp_path):
  path, model, _, _ = reduced
  state_dict, config = diffusers_unet2d.load(path)
  want = convert.convert_state_dict('diffusers_unet2d', config, state_dict)
  old = {}
  for name, value in model.state_dict().items():
    for new, dep in (('to_q', 'query'), ('to_k', 'key'), ('to_v', 'value')):
      name = name.replace(f'.{new}.', f'.{dep}.')
    old[name.replace('.to_out.0.', '.proj_attn.')] = value
  assert any('.proj_attn.' in k for k in old)
  torch.save(old, tmp_path / 'diffusion_pytorch_model.bin')
  (tmp_path / 'config.json').write_text(json.dumps(config))
  old_state, old_config = diffusers_unet2d.load(str(tmp_path))
  got = convert.convert_state_dict('diffusers_unet2d', old_config, old_state)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_a_missing_extra_or_misshapen_tensor_is_named(reduced):
  path, _, _, _ = reduced
  state_dict, config = diffusers_unet2d.load(path)
  name = 'up_blocks.2.attentions.1.to_k.weight'
  missing = {k: v for k, v in state_dict.items() if k != name}
  with pytest.raises(convert.ConversionError, match=name.replace('.', r'\.')):
    convert.convert_state_dict('diffusers_unet2d', config, missing)
  extra = {**state_dict, 'mid_block.attentions.0.extra.weight': np.zeros(3, np.float32)}
  with pytest.raises(convert.ConversionError, match=r'mid_block\.attentions\.0\.extra\.weight'):
    convert.convert_state_dict('diffusers_unet2d', config, extra)
  name = 'down_blocks.1.resnets.0.conv1.weight'
  bad = {**state_dict, name: state_dict[name][:, :-1]}
  with pytest.raises(convert.ConversionError, match=name.replace('.', r'\.') + '.*shape'):
    convert.convert_state_dict('diffusers_unet2d', config, bad)


def test_full_size_parameter_count_equals_diffusers():
  network = ddpm_cifar10.NETWORK
  reference = sum(p.numel() for p in diffusers.UNet2DModel(**network).parameters())
  ours = models.count_params(networks.abstract_params(diffusers_unet2d.model_overrides(network)))
  assert ours == reference == 35_746_307
  assert round(ours / 1e6, 2) == 35.75  # DDPM CIFAR-10 (Ho et al. 2020: 35.7M)
  # The 256x256 network (diffusers' count for NETWORK_256, measured once: 113,673,219).
  overrides = diffusers_unet2d.model_overrides(ddpm_celebahq256.NETWORK_256)
  assert models.count_params(networks.abstract_params(overrides)) == 113_673_219


def test_defaults_are_unet2dmodels_and_bad_settings_fail_in_one_line():
  signature = inspect.signature(diffusers.UNet2DModel.__init__).parameters
  reference = {k: p.default for k, p in signature.items() if k != 'self'}
  ours = {k: tuple(v) if isinstance(v, tuple) else v for k, v in ddpm_unet.DEFAULTS.items()}
  assert set(ours) == set(reference)
  for key, value in reference.items():
    if key != 'dropout':  # None = config.model.dropout
      assert ours[key] == (tuple(value) if isinstance(value, (list, tuple)) else value), key
  cases = [
    ({'time_embedding_type': 'fourier'}, 'time_embedding_type'),
    ({'down_block_types': ('DownBlock2D', 'CrossAttnDownBlock2D')}, 'down_block_types'),
    ({'norm_num_groups': 7}, 'norm_num_groups'),
    ({'blocks': 3}, "'blocks'"),
    ({'sample_size': 64}, 'sample_size'),
  ]
  for change, key in cases:
    overrides = diffusers_unet2d.model_overrides(TINY)
    overrides['model']['network_kwargs'].update(change)
    with pytest.raises(ValueError, match=key) as error:
      networks.build_model(overrides)
    assert '\n' not in str(error.value)
  overrides = diffusers_unet2d.model_overrides(TINY)
  overrides['data']['num_classes'] = 10
  overrides['model']['class_conditional'] = True
  with pytest.raises(ValueError, match='class_conditional=False'):
    networks.build_model(overrides)


def test_cli_writes_a_checkpoint_main_samples_from(tmp_path, monkeypatch):
  source, workdir = str(tmp_path / 'ddpm-tiny'), str(tmp_path / 'run')
  model = torch_unet({**TINY, 'sample_size': 32})
  model.save_pretrained(source)
  assert cli.main(['--from=diffusers_unet2d', f'--input={source}', f'--workdir={workdir}']) == 0
  record = json.loads(open(os.path.join(workdir, 'convert.json')).read())
  assert record['base_config'] == 'configs/ddpm_cifar10.py'  # found from sample_size 32
  assert not record['config_matches_checkpoint'] and record['config'].endswith('config.py')
  # The restored EMA parameters are the converted weights.
  state_dict, config = diffusers_unet2d.load(source)
  want = convert.convert_state_dict('diffusers_unet2d', config, state_dict)
  restored = checkpointing.restore_ema_params(workdir, want)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), want)
  # The whole training state restores too (--mode=train fine-tunes from step 0).
  components = build_lib.build(
    config_lib.build_run_config(config_lib.load_config_file(record['config']))
  )
  abstract = jax.eval_shape(components.init_fn, jax.random.PRNGKey(0))
  abstract = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    abstract,
    components.state_sharding,
  )
  with checkpointing.Checkpointer(workdir, save_every=1, handle_sigterm=False) as ckpt:
    state = ckpt.restore(abstract)
  assert int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), want)
  # A second conversion into the same run directory is refused.
  assert cli.main(['--from=diffusers_unet2d', f'--input={source}', f'--workdir={workdir}']) == 1

  argv = [
    'main.py',
    f'--config={record["config"]}',
    f'--workdir={workdir}',
    '--mode=sample',
    '--compilation_cache_dir=none',
    '--config.sample.num_steps=3',  # the paper's ancestral sampler, respaced
    '--config.sample.num_samples=8',
    '--config.sample.batch_size=8',
  ]
  monkeypatch.setattr(sys, 'argv', argv)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  main_lib.main(['main.py'])
  samples = np.load(os.path.join(workdir, 'samples', 'ddpm_step_000000.npz'))
  images = samples['images']
  assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8
  assert len(np.unique(images)) > 10


def test_help_lists_every_format(capsys):
  with pytest.raises(SystemExit):
    cli.parse_args(['--help'])
  text = capsys.readouterr().out
  for fmt in convert.FORMAT_MODULES:
    assert fmt in text
  assert 'UNet2DModel' in text
