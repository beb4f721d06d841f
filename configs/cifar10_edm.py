"""Class-conditional CIFAR-10 with EDM (Karras et al. 2022): DDPM++ network, Heun sampler.

Launch:

    python main.py --config=configs/cifar10_edm.py --workdir=/tmp/cifar10_edm

The paper's CIFAR-10 "config F" with the VP-derived DDPM++ architecture: 128 base
channels, multipliers (2, 2, 2), four residual blocks per level, attention at 16x16,
residual up/down sampling, sqrt(1/2) skip scaling, dropout 0.13, augmentation
conditioning (9 dims, non-leaking augmentation with probability 0.12); preconditioning
with sigma_data 0.5, ln(sigma) ~ N(-1.2, 1.2^2); Adam 1e-3 (betas 0.9, 0.999, eps 1e-8),
learning-rate ramp over 10M images, batch 512 for 200M images, EMA half-life 0.5M
images; deterministic Heun sampling with 18 steps (NFE 35), sigma 0.002 -> 80, rho 7.
Published: FID 1.79 (conditional), 1.97 (unconditional: set model.class_conditional).
"""

import math

import ml_collections

from configs import cifar10_ddpm

BATCH = 512


def get_config() -> ml_collections.ConfigDict:
  """Returns the EDM CIFAR-10 configuration."""
  config = cifar10_ddpm.get_config()
  config.data.random_flip = False  # Flips are part of the EDM augmentation pipeline.
  config.data.augment_prob = 0.12

  model = config.model
  model.class_conditional = True
  model.base_channels = 128
  model.channel_mults = (2, 2, 2)
  model.num_res_blocks = 4
  model.attention_resolutions = (16,)
  model.num_heads = 1
  model.dropout = 0.13
  model.resblock_updown = True
  model.skip_scale = math.sqrt(0.5)
  model.augment_dim = 9

  diffusion = config.diffusion
  diffusion.objective = 'edm'
  diffusion.sigma_data = 0.5
  diffusion.p_mean = -1.2
  diffusion.p_std = 1.2
  diffusion.label_drop_prob = 0.0

  optim = config.optim
  optim.name = 'adam'
  optim.learning_rate = 1e-3
  optim.lr_schedule = 'constant'
  optim.warmup_steps = 10_000_000 // BATCH  # 19,531 steps.
  optim.grad_clip = 0.0
  optim.ema_decay = 0.5 ** (BATCH / 500_000)  # half-life of 0.5M images: 0.99929.
  optim.ema_warmup = False
  optim.ema_halflife_kimg = 500  # EDM's EMA, used instead of ema_decay (same half-life)
  optim.ema_rampup_ratio = 0.05  # with its ramp-up: half-life <= 5% of the images seen

  training = config.training
  training.batch_size = BATCH
  training.num_steps = 200_000_000 // BATCH  # 390,625 steps.

  sample = config.sample
  sample.sampler = 'edm_heun'
  sample.num_steps = 18
  sample.sigma_min = 0.002
  sample.sigma_max = 80.0
  sample.rho = 7.0
  sample.s_churn = 0.0
  sample.clip_x0 = False
  config.eval.metrics = ('fid', 'is')
  return config
