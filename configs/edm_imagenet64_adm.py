"""EDM's released class-conditional ImageNet-64 ADM network (edm-imagenet-64x64-cond-adm.pkl).

Launch (the released checkpoint, then sampling or FID):

    python -m diffusion_jax.convert --from=edm --input=edm-imagenet-64x64-cond-adm.pkl \
      --config=configs/edm_imagenet64_adm.py --workdir=workdir/edm_in64
    python main.py --config=configs/edm_imagenet64_adm.py --workdir=workdir/edm_in64 --mode=sample

Training from scratch: python main.py --config=configs/edm_imagenet64_adm.py --workdir=/tmp/a
Smoke test: python main.py --config=configs/edm_imagenet64_adm.py:tiny --workdir=/tmp/a_tiny

EDMPrecond(DhariwalUNet), EDM's re-implementation of ADM (Dhariwal & Nichol 2021): 192
channels, multipliers (1, 2, 3, 4), three blocks per level, attention at 32, 16 and 8 with
64 channels per head, adaptive scale-shift norm, dropout 0.10, no augmentation labels;
295.90M parameters. Training as EDM's README (train.py --cond=1 --arch=adm
--duration=2500 --batch=4096 --lr=1e-4 --ema=50 --dropout=0.10 --augment=0 --fp16=1):
Adam 1e-4 with the 10M-image ramp, EMA half-life 50M images; fp16 is float32 here (the
checkpoint holds float32 weights). Sampler: EDM's stochastic Algorithm 2, 256 steps
(NFE 511), S_churn 40, S_tmin 0.05, S_tmax 50, S_noise 1.003, sigma 0.002 -> 80, rho 7.
Published: FID 1.36 (EDM Table 2, against EDM's imagenet-64x64.npz statistics).
"""

import ml_collections

from configs import default

BATCH = 4096
# Every DhariwalUNet keyword (what the converter writes for the released pickle).
ADM = dict(
  augment_dim=0,
  model_channels=192,
  channel_mult=(1, 2, 3, 4),
  channel_mult_emb=4,
  num_blocks=3,
  attn_resolutions=(32, 16, 8),
  dropout=0.10,
  label_dropout=0.0,
)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the EDM ImageNet-64 configuration; `arg='tiny'` the test-size variant."""
  config = default.get_config()

  data = config.data
  data.name = 'imagenet2012'
  data.image_size = 64
  data.num_channels = 3
  data.num_classes = 1000
  data.random_flip = False  # train.py --xflip defaults to False; --augment=0.
  data.augment_prob = 0.0

  model = config.model
  model.name = 'edm_dhariwalunet'
  model.network_kwargs = ml_collections.ConfigDict(ADM)
  model.class_conditional = True
  model.augment_dim = 0
  model.dropout = ADM['dropout']
  model.self_cond = False

  diffusion = config.diffusion
  diffusion.objective = 'edm'
  diffusion.precond = 'edm'
  diffusion.sigma_data = 0.5
  diffusion.p_mean = -1.2
  diffusion.p_std = 1.2
  diffusion.label_drop_prob = 0.0
  diffusion.self_cond_rate = 0.0

  optim = config.optim
  optim.name = 'adam'
  optim.learning_rate = 1e-4
  optim.lr_schedule = 'constant'
  optim.warmup_steps = 10_000_000 // BATCH  # EDM's lr_rampup_kimg = 10000.
  optim.weight_decay = 0.0
  optim.grad_clip = 0.0
  optim.ema_decay = 0.5 ** (BATCH / 50_000_000)
  optim.ema_warmup = False
  optim.ema_halflife_kimg = 50_000  # --ema=50 (Mimg)
  optim.ema_rampup_ratio = 0.05

  training = config.training
  training.batch_size = BATCH
  training.num_steps = 2_500_000_000 // BATCH  # --duration=2500 (Mimg): 610,351 steps.

  sample = config.sample
  sample.sampler = 'edm_heun'
  sample.num_steps = 256
  sample.sigma_min = 0.002
  sample.sigma_max = 80.0
  sample.rho = 7.0
  sample.s_churn = 40.0
  sample.s_tmin = 0.05
  sample.s_tmax = 50.0
  sample.s_noise = 1.003
  sample.clip_x0 = False
  sample.guidance = 0.0
  sample.num_samples = 50_000
  sample.batch_size = 500

  config.eval.metrics = ('fid', 'is')
  config.eval.num_samples = 50_000
  if arg == 'tiny':
    _shrink(config)
  elif arg:
    raise ValueError(f"configs/edm_imagenet64_adm.py takes '' or 'tiny', got {arg!r}.")
  return config


def _shrink(config: ml_collections.ConfigDict) -> None:
  """16x16 images, 64 channels over 2 levels (one head at 16, two at 8), 10 classes."""
  config.data.name = 'digits'  # any offline source; sampling reads no data.
  config.data.image_size = 16
  config.data.num_classes = 10
  kwargs = config.model.network_kwargs
  kwargs.model_channels = 64
  kwargs.channel_mult = (1, 2)
  kwargs.num_blocks = 1
  kwargs.attn_resolutions = (8,)
  config.training.batch_size = 8
  config.training.num_steps = 2
  config.optim.warmup_steps = 0
  config.sample.num_steps = 3
  config.sample.num_samples = 8
  config.sample.batch_size = 8
