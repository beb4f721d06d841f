"""Unconditional CIFAR-10 with Improved DDPM (Nichol & Dhariwal 2021): cosine, L_hybrid.

Launch:

    python main.py --config=configs/cifar10_iddpm.py --workdir=/tmp/cifar10_iddpm

The paper's CIFAR-10 hybrid-loss setup: U-Net with 128 base channels, multipliers
(1, 2, 2, 2), three residual blocks per level, attention (4 heads) at 16x16 and 8x8,
scale-shift norm, dropout 0.3, learned variance (2C output channels); T = 4000 with the
cosine schedule, L_hybrid = L_simple + 0.001 L_vlb; Adam 1e-4, batch 128, 500k steps,
EMA 0.9999; sampling with the learned variance (respaced to 100 steps costs little FID).
As in the reference scripts (`script_util.model_and_diffusion_defaults`,
rescale_timesteps=True) the network is fed t * 1000 / T = t / 4, also when sampling a
respaced chain (original indices, original T).
"""

import ml_collections

from configs import cifar10_ddpm


def get_config() -> ml_collections.ConfigDict:
  """Returns the Improved-DDPM CIFAR-10 configuration."""
  config = cifar10_ddpm.get_config()
  # improved-diffusion's image_datasets.ImageDataset does not flip (DDPM's pipeline does).
  config.data.random_flip = False

  model = config.model
  model.num_res_blocks = 3
  model.attention_resolutions = (16, 8)
  model.num_heads = 4
  model.dropout = 0.3
  model.scale_shift_norm = True
  model.learn_variance = True

  diffusion = config.diffusion
  diffusion.objective = 'iddpm'
  diffusion.num_timesteps = 4000
  diffusion.beta_schedule = 'cosine'
  diffusion.loss = 'hybrid'
  diffusion.importance_sampling = False  # True only with loss = 'vlb'.
  diffusion.rescale_timesteps = True  # model input t * 1000 / 4000

  optim = config.optim
  optim.learning_rate = 1e-4
  optim.warmup_steps = 0
  optim.grad_clip = 0.0

  config.training.num_steps = 500_000

  sample = config.sample
  sample.num_steps = 4000  # the learned variance (model.learn_variance) drives sampling.
  return config
