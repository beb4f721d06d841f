"""DDPM on LSUN Church 256x256 (google/ddpm-ema-church-256, 114M parameters).

Sample from the released checkpoint (https://huggingface.co/google/ddpm-ema-church-256: config.json
and diffusion_pytorch_model.safetensors in one directory):

    python -m diffusion_jax.convert --from=diffusers_unet2d --input=ddpm-ema-church-256 \
        --workdir=workdir/ddpm_lsun_church256
    python main.py --config=configs/ddpm_lsun_church256.py --workdir=workdir/ddpm_lsun_church256 \
        --mode=sample

The setup of configs/ddpm_celebahq256.py (the authors' run_lsun.py).
Published (Ho et al. 2020, Table 3; 50K samples, 1000 ancestral steps): FID 7.89.
"""

import ml_collections

from configs import ddpm_celebahq256


def get_config() -> ml_collections.ConfigDict:
  """Returns the DDPM LSUN Church 256 configuration."""
  return ddpm_celebahq256.config_256('lsun/church_outdoor', random_flip=True)
