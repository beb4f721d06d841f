"""Class-conditional ImageNet 256x256: pixel-space RIN with Chen 2023's input scaling.

Launch:

    python main.py --config=configs/imagenet256.py --workdir=/tmp/imagenet256

Patch 8x8 -> 1024 interface tokens. Unverified sizes (this project's
scaling rule, not a published table): see configs/imagenet_highres.py.
"""

import ml_collections

from configs import imagenet_highres


def get_config() -> ml_collections.ConfigDict:
  """Returns the ImageNet-256 configuration."""
  return imagenet_highres.highres_config(
    256,
    patch_size=8,
    num_latents=256,
    latent_dim=1024,
    tape_dim=512,
    num_blocks=4,
    num_compute_layers=4,
    remat=False,
    scale=0.6,
    batch_size=1024,
    num_steps=1_000_000,
  )
