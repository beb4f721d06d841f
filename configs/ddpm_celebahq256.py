"""DDPM's 256x256 network (google/ddpm-celebahq-256, 114M parameters) on CelebA-HQ.

Sample from the released checkpoint (https://huggingface.co/google/ddpm-ema-celebahq-256,
the EMA weights: config.json and diffusion_pytorch_model.safetensors in one directory):

    python -m diffusion_jax.convert --from=diffusers_unet2d --input=ddpm-ema-celebahq-256 \
        --workdir=workdir/ddpm_celebahq256
    python main.py --config=configs/ddpm_celebahq256.py --workdir=workdir/ddpm_celebahq256 \
        --mode=sample

Training reads tfds celeb_a_hq/256 (a manual download; or config.data.name='folder'
with config.data.folder). The authors' run_celebahq.py /
run_lsun.py: T = 1000, linear betas 1e-4 -> 0.02, eps prediction, dropout 0, Adam 2e-5 with
5000 warmup steps, batch 64, random flips, EMA 0.9999; ancestral sampling with 1000 steps
and the posterior variance (diffusion_utils.GaussianDiffusion: sigma_t^2 = betatilde_t),
x0 clipped to [-1, 1]. The paper reports no CelebA-HQ FID; LSUN: see configs/ddpm_lsun_*.py.
"""

import ml_collections

from configs import ddpm_cifar10

# google/ddpm-{celebahq,church,bedroom,cat}-256 config.json (one network for all four).
NETWORK_256 = {
  **ddpm_cifar10.NETWORK,
  'sample_size': 256,
  'block_out_channels': (128, 128, 256, 256, 512, 512),
  'down_block_types': (
    'DownBlock2D',
    'DownBlock2D',
    'DownBlock2D',
    'DownBlock2D',
    'AttnDownBlock2D',
    'DownBlock2D',
  ),
  'up_block_types': (
    'UpBlock2D',
    'AttnUpBlock2D',
    'UpBlock2D',
    'UpBlock2D',
    'UpBlock2D',
    'UpBlock2D',
  ),
}


def config_256(data_name: str, random_flip: bool = True) -> ml_collections.ConfigDict:
  """The 256x256 DDPM setup shared by CelebA-HQ and the LSUN categories (tfds `data_name`)."""
  config = ddpm_cifar10.get_config()
  data = config.data
  data.name = data_name  # tfds, center-cropped and resized to 256 (or name='folder')
  data.image_size = 256
  data.num_channels = 3
  data.num_classes = 0
  data.random_flip = random_flip
  data.cache_in_memory = False

  model = config.model
  model.dropout = 0.0
  model.network_kwargs = ml_collections.ConfigDict(NETWORK_256)

  config.diffusion.fixed_variance = 'small'
  optim = config.optim
  optim.learning_rate = 2e-5
  optim.warmup_steps = 5000
  training = config.training
  training.batch_size = 64
  training.num_steps = 1_000_000  # not stated per data set; the released runs went further
  sample = config.sample
  sample.num_samples = 50_000
  sample.batch_size = 64
  config.eval.metrics = ('fid',)
  return config


def get_config() -> ml_collections.ConfigDict:
  """Returns the DDPM CelebA-HQ 256 configuration."""
  return config_256('celeb_a_hq/256')
