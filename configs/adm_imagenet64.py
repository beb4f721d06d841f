"""Class-conditional ImageNet 64x64 with guided-diffusion's ADM (Dhariwal & Nichol 2021).

Launch (the released checkpoint, then sampling or FID):

    python -m diffusion_jax.convert --from=openai_unet --input=64x64_diffusion.pt \
      --config=configs/adm_imagenet64.py --workdir=workdir/adm_imagenet64
    python main.py --config=configs/adm_imagenet64.py --workdir=workdir/adm_imagenet64 --mode=sample

Training from scratch: python main.py --config=configs/adm_imagenet64.py --workdir=/tmp/adm64
Smoke test at 16x16 with a 2-level, 32-channel network of the same structure:
python main.py --config=configs/adm_imagenet64.py:tiny --workdir=/tmp/adm_tiny

The network is the reference `UNetModel` (model.name = 'adm_unet') with the README's
64x64_diffusion.pt flags as create_model keywords: 192 channels, multipliers (1, 2, 3, 4),
three residual blocks per level, attention at 32, 16 and 8 with 64 channels per head
(new attention order), BigGAN residual up/down sampling, scale-shift norm, dropout 0.1,
learned sigma; 295.90M parameters. use_fp16 is False here: the checkpoint holds float32
weights either way. Diffusion: T = 1000 with the cosine schedule (README
--diffusion_steps 1000; paper Table 11), L_hybrid (guided-diffusion's MSE + VLB, whose
weight equals lambda T = 0.001 x 1000), timesteps fed unscaled (rescale_timesteps False).
Training as the paper's Table 11: Adam 3e-4, batch 2048, 540k steps, EMA 0.9999.
Sampling: ancestral with the learned variance, respaced to 250 steps (NFE 250,
--timestep_respacing 250), x0 clipped. Published: FID 2.07 (ADM with dropout, Table 4).
"""

import ml_collections

from configs import default


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the ADM ImageNet-64 configuration; `arg='tiny'` the test-size variant."""
  config = default.get_config()

  data = config.data
  data.name = 'imagenet2012'
  data.image_size = 64
  data.num_channels = 3
  data.num_classes = 1000
  data.random_flip = True  # guided_diffusion.image_datasets flips by default.

  model = config.model
  model.name = 'adm_unet'
  model.class_conditional = True
  model.learn_variance = True  # learn_sigma: 6 output channels (eps, v).
  model.dropout = 0.0  # adm_unet reads network_kwargs.dropout.
  # Every create_model keyword, as the converter writes them (openai_unet.network_kwargs).
  model.network_kwargs = ml_collections.ConfigDict(
    dict(
      image_size=64,
      num_channels=192,
      num_res_blocks=3,
      channel_mult=(1, 2, 3, 4),  # create_model's '' default at 64x64.
      learn_sigma=True,
      class_cond=True,
      attention_resolutions=(32, 16, 8),
      num_heads=4,  # unused: num_head_channels sets the heads.
      num_head_channels=64,
      num_heads_upsample=-1,
      use_scale_shift_norm=True,
      dropout=0.1,
      resblock_updown=True,
      use_new_attention_order=True,
      use_fp16=False,
      use_checkpoint=False,
    )
  )

  diffusion = config.diffusion
  diffusion.objective = 'iddpm'
  diffusion.num_timesteps = 1000
  diffusion.beta_schedule = 'cosine'
  diffusion.loss = 'hybrid'
  diffusion.hybrid_weight = 0.001
  diffusion.importance_sampling = False
  diffusion.rescale_timesteps = False  # guided-diffusion's default: the model sees t.
  diffusion.label_drop_prob = 0.0  # no classifier-free guidance.
  diffusion.self_cond_rate = 0.0

  optim = config.optim
  optim.name = 'adam'
  optim.learning_rate = 3e-4
  optim.lr_schedule = 'constant'
  optim.warmup_steps = 0
  optim.weight_decay = 0.0
  optim.grad_clip = 0.0
  optim.ema_decay = 0.9999
  optim.ema_warmup = False

  training = config.training
  training.batch_size = 2048
  training.num_steps = 540_000
  training.log_every = 100
  training.checkpoint_every = 10_000
  training.sample_every = 20_000

  sample = config.sample
  sample.sampler = 'ddpm'  # ancestral, learned variance (model.learn_variance).
  sample.num_steps = 250  # respaced from T = 1000.
  sample.clip_x0 = True
  sample.guidance = 0.0
  sample.num_samples = 50_000
  sample.batch_size = 500

  config.eval.metrics = ('fid', 'is', 'pr')
  config.eval.num_samples = 50_000
  if arg == 'tiny':
    _shrink(config)
  elif arg:
    raise ValueError(f"configs/adm_imagenet64.py takes '' or 'tiny', got {arg!r}.")
  return config


def _shrink(config: ml_collections.ConfigDict) -> None:
  """16x16 images, 32 channels over 2 levels, 100 timesteps: the same blocks, tiny."""
  config.data.name = 'digits'  # any offline source; sampling reads no data.
  config.data.image_size = 16
  config.data.num_channels = 3
  kwargs = config.model.network_kwargs
  kwargs.image_size = 16
  kwargs.num_channels = 32
  kwargs.num_res_blocks = 1
  kwargs.channel_mult = (1, 2)
  kwargs.attention_resolutions = (16, 8)
  kwargs.num_head_channels = 16
  config.diffusion.num_timesteps = 100
  config.training.batch_size = 8
  config.training.num_steps = 2
  config.sample.num_steps = 4
  config.sample.num_samples = 8
  config.sample.batch_size = 8
