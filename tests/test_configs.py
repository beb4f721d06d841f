"""Tests for the per-paper configs: launch commands, validity, and the papers' numbers."""

import importlib
import math
import os
import sys

import numpy as np
import pytest
from scipy import stats

from diffusion_jax import config as config_lib
from diffusion_jax.models import ModelConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/
from configs import default  # noqa: E402

IMAGENET = ('imagenet64', 'imagenet128', 'imagenet256', 'imagenet512', 'imagenet1024')
CIFAR = ('cifar10_ddpm', 'cifar10_iddpm', 'cifar10_ncsnv2', 'cifar10_edm', 'cifar10_rin')
# One per released checkpoint of the papers' own networks (diffusion_jax.convert).
PAPER = (
  'ddpm_cifar10',
  'ddpm_celebahq256',
  'ddpm_lsun_church256',
  'ddpm_lsun_bedroom256',
  'ddpm_lsun_cat256',
  'adm_cifar10',
  'adm_imagenet64',
  'edm_cifar10_vp',
  'edm_cifar10_ve',
  'edm_imagenet64_adm',
  'edm_ffhq64_vp',
  'edm_ffhq64_ve',
  'edm_afhq64_vp',
  'edm_afhq64_ve',
  'ncsnv2_cifar10',
  'ncsnv2_celeba',
  'ncsnv2_church',
  'ncsnv2_bedroom',
  'ncsnv2_tower',
  'ncsnv2_ffhq',
)


def load(name):
  module = importlib.import_module(f'configs.{name}')
  return module, module.get_config()


def flat_keys(config, prefix=''):
  keys = set()
  for key, value in config.items():
    if hasattr(value, 'items') and f'{prefix}{key}' != 'model.network_kwargs':
      # network_kwargs holds a paper network's own settings (its module validates them).
      keys |= flat_keys(value, f'{prefix}{key}.')
    else:
      keys.add(f'{prefix}{key}')
  return keys


@pytest.mark.parametrize('name', IMAGENET + CIFAR + PAPER + ('digits',))
def test_config_is_valid_and_documents_its_launch_command(name):
  module, config = load(name)
  assert f'python main.py --config=configs/{name}.py --workdir=' in module.__doc__
  cfg = ModelConfig.from_config(config.model, config.data)
  assert cfg.image_size == config.data.image_size
  unknown = flat_keys(config) - flat_keys(default.get_config())
  assert not unknown, f'keys missing from configs/default.py: {sorted(unknown)}'
  run = config_lib.build_run_config(config, num_devices=8)  # as the trainer reads it
  assert run.model == cfg


# The RIN configs' settings against the authors' sweeps, line by line: experiments/recipes.py
# (checked in tests/test_experiments.py).


def test_higher_resolutions_follow_the_scaling_rule():
  scales, previous = [], None
  for name in IMAGENET[1:]:
    module, c = load(name)
    cfg = ModelConfig.from_config(c.model, c.data)
    assert 'Unverified' in module.__doc__
    assert cfg.num_tokens == 1024  # the patch grows with the image
    assert c.data.name == 'imagenet2012' and cfg.num_classes == 1000
    assert (c.optim.name, c.optim.warmup_steps, c.optim.ema_decay) == ('lamb', 10_000, 0.9999)
    assert c.sample.sampler == 'chen_ddpm' and c.sample.inference_schedule == 'cosine'
    # b < 1: Var[x_t] = (b^2 - 1) gamma + 1, so the input is normalized (Chen 2023, Sec. 3).
    assert c.diffusion.normalize == 'per_example'
    scales.append(c.diffusion.scale)
    if previous is not None:
      assert cfg.latent_dim * cfg.num_latents >= previous.latent_dim * previous.num_latents
    previous = cfg
  assert scales == sorted(scales, reverse=True) and scales[0] < 1.0  # noisier when larger


def test_cifar10_ddpm_and_iddpm_settings():
  _, c = load('cifar10_ddpm')
  m = c.model
  assert (m.name, m.base_channels, tuple(m.channel_mults), m.num_res_blocks) == (
    'unet',
    128,
    (1, 2, 2, 2),
    2,
  )
  assert tuple(m.attention_resolutions) == (16,) and m.dropout == 0.1
  assert not m.class_conditional
  d = c.diffusion
  assert (d.objective, d.beta_schedule, d.num_timesteps, d.loss) == (
    'ddpm',
    'linear',
    1000,
    'simple',
  )
  assert (c.optim.name, c.optim.learning_rate, c.training.batch_size) == ('adam', 2e-4, 128)
  assert c.optim.ema_decay == 0.9999 and c.diffusion.fixed_variance == 'large'

  _, c = load('cifar10_iddpm')
  assert (c.diffusion.objective, c.diffusion.beta_schedule, c.diffusion.loss) == (
    'iddpm',
    'cosine',
    'hybrid',
  )
  assert c.model.learn_variance and c.model.dropout == 0.3 and c.optim.learning_rate == 1e-4
  assert ModelConfig.from_config(c.model, c.data).out_channels == 6


def test_cifar10_ncsnv2_constants_satisfy_the_papers_techniques():
  _, c = load('cifar10_ncsnv2')
  d, s = c.diffusion, c.sample
  assert (d.objective, d.sigma_max, d.sigma_min, d.num_levels) == ('ncsn', 50.0, 0.01, 232)
  assert (s.n_steps_each, s.step_lr, c.optim.ema_decay) == (5, 6.2e-6, 0.999)
  ratio = (d.sigma_max / d.sigma_min) ** (1 / (d.num_levels - 1))  # gamma = sigma_{i-1}/sigma_i
  dim = c.data.image_size**2 * c.data.num_channels
  # Technique 2: Phi(sqrt(2D)(g-1) + 3g) - Phi(sqrt(2D)(g-1) - 3g); the paper's L gives 0.567.
  crit = stats.norm.cdf(math.sqrt(2 * dim) * (ratio - 1) + 3 * ratio) - stats.norm.cdf(
    math.sqrt(2 * dim) * (ratio - 1) - 3 * ratio
  )
  assert abs(crit - 0.567) < 5e-3
  # Technique 4 (Prop. 3): s_T^2 / sigma_i^2 with the configured eps is close to 1 (1.055).
  eps, sl2, steps = s.step_lr, d.sigma_min**2, s.n_steps_each
  tail = 2 * eps / (sl2 - sl2 * (1 - eps / sl2) ** 2)
  var_ratio = (1 - eps / sl2) ** (2 * steps) * (ratio**2 - tail) + tail
  assert abs(var_ratio - 1.055) < 0.01


def test_cifar10_edm_settings():
  _, c = load('cifar10_edm')
  d = c.diffusion
  assert (d.objective, d.sigma_data, d.p_mean, d.p_std) == ('edm', 0.5, -1.2, 1.2)
  assert c.data.augment_prob == 0.12 and c.model.augment_dim == 9
  assert (c.sample.sampler, c.sample.num_steps) == ('edm_heun', 18)  # NFE 2 * 18 - 1 = 35
  assert (c.sample.sigma_min, c.sample.sigma_max, c.sample.rho) == (0.002, 80.0, 7.0)
  images_per_half_life = math.log(0.5) / math.log(c.optim.ema_decay) * c.training.batch_size
  np.testing.assert_allclose(images_per_half_life, 500_000, rtol=1e-9)
  assert c.training.num_steps * c.training.batch_size == 200_000_000
  assert ModelConfig.from_config(c.model, c.data).skip_scale == pytest.approx(math.sqrt(0.5))
