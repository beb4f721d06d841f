"""DDPM's own CIFAR-10 network (google/ddpm-cifar10-32) with the paper's training and sampler.

Sample from the released checkpoint (https://huggingface.co/google/ddpm-cifar10-32: its
config.json and diffusion_pytorch_model.safetensors in one directory):

    python -m diffusion_jax.convert --from=diffusers_unet2d --input=ddpm-cifar10-32 \
        --workdir=workdir/ddpm_cifar10
    python main.py --config=configs/ddpm_cifar10.py --workdir=workdir/ddpm_cifar10 --mode=sample

or train it from scratch:

    python main.py --config=configs/ddpm_cifar10.py --workdir=workdir/ddpm_cifar10

Everything but the network is configs/cifar10_ddpm.py (Ho et al. 2020, appendix B: T = 1000,
linear betas 1e-4 -> 0.02, eps prediction, dropout 0.1, Adam 2e-4, EMA 0.9999; ancestral
sampling with 1000 steps and sigma_t^2 = beta_t, the authors' run_cifar.py 'fixedlarge').
The network is diffusers' UNet2DModel with the checkpoint's config.json values (35.75M
parameters). Published: FID 3.17, IS 9.46 (50K samples, 1000 steps).
"""

import ml_collections

from configs import cifar10_ddpm

# google/ddpm-cifar10-32 config.json (UNet2DModel keyword arguments).
NETWORK = {
  'sample_size': 32,
  'in_channels': 3,
  'out_channels': 3,
  'act_fn': 'silu',
  'attention_head_dim': None,
  'block_out_channels': (128, 256, 256, 256),
  'center_input_sample': False,
  'down_block_types': ('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
  'downsample_padding': 0,
  'flip_sin_to_cos': False,
  'freq_shift': 1,
  'layers_per_block': 2,
  'mid_block_scale_factor': 1,
  'norm_eps': 1e-6,
  'norm_num_groups': 32,
  'time_embedding_type': 'positional',
  'up_block_types': ('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
}


def get_config() -> ml_collections.ConfigDict:
  """Returns the DDPM CIFAR-10 configuration on DDPM's own network."""
  config = cifar10_ddpm.get_config()
  model = config.model
  model.name = 'ddpm_unet'
  model.class_conditional = False
  model.dropout = 0.1  # the paper's CIFAR-10 dropout (config.json has none)
  model.network_kwargs = ml_collections.ConfigDict(NETWORK)
  return config
