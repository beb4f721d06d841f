"""Class-conditional ImageNet 1024x1024: pixel-space RIN with Chen 2023's input scaling.

Launch:

    python main.py --config=configs/imagenet1024.py --workdir=/tmp/imagenet1024

Patch 32x32 -> 1024 interface tokens. Unverified sizes (this project's
scaling rule, not a published table): see configs/imagenet_highres.py.
"""

import ml_collections

from configs import imagenet_highres


def get_config() -> ml_collections.ConfigDict:
  """Returns the ImageNet-1024 configuration."""
  return imagenet_highres.highres_config(
    1024,
    patch_size=32,
    num_latents=256,
    latent_dim=1024,
    tape_dim=768,
    num_blocks=6,
    num_compute_layers=4,
    remat=True,
    scale=0.5,
    batch_size=512,
    num_steps=1_000_000,
  )
