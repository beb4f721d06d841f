"""Unconditional CIFAR-10 with improved-diffusion's UNetModel (Nichol & Dhariwal 2021).

Launch (the released L_hybrid checkpoint, then sampling or FID):

    python -m diffusion_jax.convert --from=openai_unet --input=cifar10_uncond_50M_500K.pt \
      --config=configs/adm_cifar10.py --workdir=workdir/adm_cifar10
    python main.py --config=configs/adm_cifar10.py --workdir=workdir/adm_cifar10 --mode=sample

Training from scratch: python main.py --config=configs/adm_cifar10.py --workdir=/tmp/adm_c10
Smoke test at 16x16 with a 2-level, 32-channel network of the same structure:
python main.py --config=configs/adm_cifar10.py:tiny --workdir=/tmp/adm_c10_tiny

The network is the reference `UNetModel` (model.name = 'adm_unet') with the README's
CIFAR-10 flags (--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True
--dropout 0.3) on improved-diffusion's defaults: multipliers (1, 2, 2, 2), attention at 16
and 8 with 4 heads (improved-diffusion's attention = guided-diffusion's legacy order),
scale-shift norm, no resampling blocks; 52.55M parameters. Diffusion: T = 4000 with the
cosine schedule, L_hybrid = L_simple + 0.001 L_vlb, timesteps fed as t * 1000 / T
(improved-diffusion's rescale_timesteps default). Training: Adam 1e-4, batch 128, 500k
steps, EMA 0.9999. Sampling: ancestral with the learned variance over all 4000 steps
(NFE 4000; `sample.num_steps` respaces, e.g. 100).
"""

import ml_collections

from configs import cifar10_iddpm


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the improved-diffusion CIFAR-10 configuration; `arg='tiny'` the test size."""
  config = cifar10_iddpm.get_config()

  model = config.model
  model.name = 'adm_unet'
  model.class_conditional = False
  model.learn_variance = True
  model.dropout = 0.0  # adm_unet reads network_kwargs.dropout.
  # Every create_model keyword, as the converter writes them (openai_unet.network_kwargs).
  model.network_kwargs = ml_collections.ConfigDict(
    dict(
      image_size=32,
      num_channels=128,
      num_res_blocks=3,
      channel_mult=(1, 2, 2, 2),  # improved-diffusion's create_model at 32x32.
      learn_sigma=True,
      class_cond=False,
      attention_resolutions=(16, 8),
      num_heads=4,
      num_head_channels=-1,
      num_heads_upsample=-1,
      use_scale_shift_norm=True,
      dropout=0.3,
      resblock_updown=False,  # improved-diffusion has no resampling blocks,
      use_new_attention_order=False,  # and its attention is the legacy order.
      use_fp16=False,
      use_checkpoint=False,
    )
  )

  diffusion = config.diffusion
  diffusion.objective = 'iddpm'
  diffusion.num_timesteps = 4000
  diffusion.beta_schedule = 'cosine'
  diffusion.loss = 'hybrid'
  diffusion.rescale_timesteps = True

  sample = config.sample
  sample.sampler = 'ddpm'
  sample.num_steps = 4000
  sample.clip_x0 = True
  if arg == 'tiny':
    _shrink(config)
  elif arg:
    raise ValueError(f"configs/adm_cifar10.py takes '' or 'tiny', got {arg!r}.")
  return config


def _shrink(config: ml_collections.ConfigDict) -> None:
  """16x16 images, 32 channels over 2 levels, 100 timesteps: the same blocks, tiny."""
  config.data.image_size = 16
  kwargs = config.model.network_kwargs
  kwargs.image_size = 16
  kwargs.num_channels = 32
  kwargs.num_res_blocks = 2
  kwargs.channel_mult = (1, 2)
  kwargs.attention_resolutions = (8,)
  kwargs.num_heads = 2
  kwargs.num_heads_upsample = 4
  config.diffusion.num_timesteps = 100
  config.training.batch_size = 8
  config.training.num_steps = 2
  config.sample.num_steps = 4
  config.sample.num_samples = 8
  config.sample.batch_size = 8
