"""Class-conditional ImageNet 128x128: pixel-space RIN with Chen 2023's input scaling.

Launch:

    python main.py --config=configs/imagenet128.py --workdir=/tmp/imagenet128

Patch 4x4 -> 1024 interface tokens. Unverified sizes (this project's
scaling rule, not a published table): see configs/imagenet_highres.py.
"""

import ml_collections

from configs import imagenet_highres


def get_config() -> ml_collections.ConfigDict:
  """Returns the ImageNet-128 configuration."""
  return imagenet_highres.highres_config(
    128,
    patch_size=4,
    num_latents=128,
    latent_dim=1024,
    tape_dim=512,
    num_blocks=4,
    num_compute_layers=4,
    remat=False,
    scale=0.8,
    batch_size=1024,
    num_steps=300_000,
  )
