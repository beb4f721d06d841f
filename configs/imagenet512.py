"""Class-conditional ImageNet 512x512: pixel-space RIN with Chen 2023's input scaling.

Launch:

    python main.py --config=configs/imagenet512.py --workdir=/tmp/imagenet512

Patch 16x16 -> 1024 interface tokens. Unverified sizes (this project's
scaling rule, not a published table): see configs/imagenet_highres.py.
"""

import ml_collections

from configs import imagenet_highres


def get_config() -> ml_collections.ConfigDict:
  """Returns the ImageNet-512 configuration."""
  return imagenet_highres.highres_config(
    512,
    patch_size=16,
    num_latents=256,
    latent_dim=1024,
    tape_dim=768,
    num_blocks=6,
    num_compute_layers=4,
    remat=True,
    scale=0.5,
    batch_size=1024,
    num_steps=1_000_000,
  )
