"""Class-conditional CIFAR-10 with EDM (Karras et al. 2022): DDPM++ network, Heun sampler.

Launch:

    python main.py --config=configs/cifar10_edm.py --workdir=/tmp/cifar10_edm

The paper's CIFAR-10 "config F" (train.py --cond=1 --arch=ddpmpp --precond=edm): EDM's own
SongUNet in the DDPM++ setting (model.name = 'edm_songunet', its constructor keywords in
model.network_kwargs): 128 base channels, multipliers (2, 2, 2), four residual blocks per
level, attention at 16x16, positional noise embedding, [1, 1] resampling filter, sqrt(1/2)
skip scaling, dropout 0.13, augmentation conditioning (9 dims, non-leaking augmentation
with probability 0.12); 55.74M parameters. Preconditioning 'edm' with sigma_data 0.5,
ln(sigma) ~ N(-1.2, 1.2^2); Adam 1e-3 (betas 0.9, 0.999, eps 1e-8), learning-rate ramp
over 10M images, batch 512 for 200M images, EMA half-life 0.5M images; deterministic
Heun sampling with 18 steps (NFE 35), sigma 0.002 -> 80, rho 7.
Published: FID 1.79 (conditional), 1.97 (unconditional: set model.class_conditional).
The house U-Net's closest settings are kept below: model.name = 'unet' with an empty
model.network_kwargs trains it instead.
"""

import math

import ml_collections

from configs import cifar10_ddpm

BATCH = 512
# EDM train.py --arch=ddpmpp on CIFAR-10: every SongUNet keyword (the converter writes the
# same set for edm-cifar10-32x32-*-vp.pkl).
DDPMPP = dict(
  augment_dim=9,
  model_channels=128,
  channel_mult=(2, 2, 2),
  channel_mult_emb=4,
  num_blocks=4,
  attn_resolutions=(16,),
  dropout=0.13,
  label_dropout=0.0,
  embedding_type='positional',
  channel_mult_noise=1,
  encoder_type='standard',
  decoder_type='standard',
  resample_filter=(1, 1),
)
# --arch=ncsnpp: Fourier noise embedding, residual encoder, [1, 3, 3, 1] filter.
NCSNPP = dict(
  DDPMPP,
  embedding_type='fourier',
  channel_mult_noise=2,
  encoder_type='residual',
  resample_filter=(1, 3, 3, 1),
)


def get_config() -> ml_collections.ConfigDict:
  """Returns the EDM CIFAR-10 configuration."""
  config = cifar10_ddpm.get_config()
  config.data.random_flip = False  # Flips are part of the EDM augmentation pipeline.
  config.data.augment_prob = 0.12

  model = config.model
  model.name = 'edm_songunet'
  model.network_kwargs = ml_collections.ConfigDict(DDPMPP)
  model.class_conditional = True
  model.augment_dim = DDPMPP['augment_dim']
  model.dropout = DDPMPP['dropout']
  # With model.name = 'unet': the house U-Net's closest equivalent of DDPM++.
  model.base_channels = 128
  model.channel_mults = (2, 2, 2)
  model.num_res_blocks = 4
  model.attention_resolutions = (16,)
  model.num_heads = 1
  model.resblock_updown = True
  model.skip_scale = math.sqrt(0.5)

  diffusion = config.diffusion
  diffusion.objective = 'edm'
  diffusion.precond = 'edm'
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


def shrink_network(config: ml_collections.ConfigDict) -> None:
  """16x16 images, 16 channels over 2 levels, one block each: the same layers, tiny."""
  config.data.name = 'digits'  # any offline source; sampling reads no data.
  config.data.image_size = 16
  kwargs = config.model.network_kwargs
  kwargs.model_channels = 16
  kwargs.channel_mult = (1, 2)
  kwargs.num_blocks = 1
  kwargs.attn_resolutions = (8,)
  config.training.batch_size = 8
  config.training.num_steps = 2
  config.optim.warmup_steps = 0
  config.sample.num_steps = 3
  config.sample.num_samples = 8
  config.sample.batch_size = 8


def faces_64x64(folder: str, arch: str, dropout: float) -> ml_collections.ConfigDict:
  """EDM's unconditional 64x64 runs (FFHQ, AFHQv2; README "Training new models"):
  `--cond=0 --arch=<arch> --batch=256 --cres=1,2,2,2 --lr=2e-4 --dropout=<dropout>
  --augment=0.15`, 200M images, EMA half-life 0.5M images, images read from `folder`;
  deterministic Heun with 40 steps (NFE 79), EDM's recommended setting at 64x64."""
  if arch not in ('ddpmpp', 'ncsnpp'):
    raise ValueError(f"arch must be 'ddpmpp' or 'ncsnpp', got {arch!r}.")
  config = get_config()
  batch = 256
  config.data.name = 'folder'
  config.data.folder = folder
  config.data.image_size = 64
  config.data.num_classes = 0
  config.data.augment_prob = 0.15
  kwargs = dict(DDPMPP if arch == 'ddpmpp' else NCSNPP)
  kwargs.update(channel_mult=(1, 2, 2, 2), dropout=dropout)
  config.model.network_kwargs = ml_collections.ConfigDict(kwargs)
  config.model.class_conditional = False
  config.model.dropout = dropout
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 10_000_000 // batch
  config.optim.ema_decay = 0.5 ** (batch / 500_000)
  config.training.batch_size = batch
  config.training.num_steps = 200_000_000 // batch
  config.sample.num_steps = 40
  config.sample.num_samples = 50_000
  config.sample.batch_size = 500
  config.eval.metrics = ('fid',)
  config.eval.num_samples = 50_000
  return config
