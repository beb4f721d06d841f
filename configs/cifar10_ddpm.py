"""Unconditional CIFAR-10 with DDPM (Ho et al. 2020): U-Net, linear betas, L_simple.

Launch:

    python main.py --config=configs/cifar10_ddpm.py --workdir=/tmp/cifar10_ddpm

The paper's CIFAR-10 setup (appendix B): U-Net with 128 base channels, multipliers
(1, 2, 2, 2), two residual blocks per level, self-attention at 16x16, dropout 0.1,
35.7M parameters; T = 1000, betas linear 1e-4 -> 0.02, eps prediction; Adam 2e-4 with
5000 warmup steps, gradient clipping 1, batch 128 for 800k steps, random flips,
EMA 0.9999; ancestral sampling with 1000 steps. Published: FID 3.17, IS 9.46.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Returns the DDPM CIFAR-10 configuration."""
  config = default.get_config()

  data = config.data
  data.name = 'cifar10'
  data.image_size = 32
  data.num_channels = 3
  data.num_classes = 10
  data.random_flip = True

  model = config.model
  model.name = 'unet'
  model.class_conditional = False
  model.self_cond = False
  model.base_channels = 128
  model.channel_mults = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attention_resolutions = (16,)
  model.num_heads = 1
  model.dropout = 0.1
  model.scale_shift_norm = False
  model.resblock_updown = False
  model.skip_scale = 1.0
  model.learn_variance = False

  diffusion = config.diffusion
  diffusion.objective = 'ddpm'
  diffusion.num_timesteps = 1000
  diffusion.beta_schedule = 'linear'
  diffusion.loss = 'simple'
  diffusion.prediction = 'eps'
  diffusion.self_cond_rate = 0.0
  diffusion.label_drop_prob = 0.0
  diffusion.rescale_timesteps = True  # t * 1000 / T: the index itself at T = 1000
  diffusion.fixed_variance = 'large'  # sigma_t^2 = beta_t; the paper found 'small' similar.

  optim = config.optim
  optim.name = 'adam'
  optim.learning_rate = 2e-4
  optim.lr_schedule = 'constant'
  optim.warmup_steps = 5000
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.grad_clip = 1.0
  optim.ema_decay = 0.9999

  training = config.training
  training.batch_size = 128
  training.num_steps = 800_000
  training.checkpoint_every = 10_000
  training.sample_every = 20_000

  sample = config.sample
  sample.sampler = 'ddpm'
  sample.num_steps = 1000
  sample.clip_x0 = True
  sample.guidance = 0.0
  sample.num_samples = 50_000
  sample.batch_size = 1000

  config.eval.metrics = ('fid', 'is', 'nll')
  config.eval.num_samples = 50_000
  return config
