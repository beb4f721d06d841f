"""Class-conditional ImageNet 1024x1024: pixel-space RIN with Chen 2023's input scaling.

Launch:

    python main.py --config=configs/imagenet1024.py --workdir=/tmp/imagenet1024

Unverified sizes: the architecture, input scale b and run length follow this project's
scaling rule (RIN_CONFIGS.md, "Higher resolutions", rows marked *ours*), not a
published table. The rule keeps the interface at 1024 tokens by growing the patch
(32x32 -> 1024 tokens), lets the latents carry the compute, and uses a
noisier process (smaller b) for larger images, as Chen 2023 found necessary. Treat b
and the widths as tunable defaults. Everything else (LAMB, warmup 10k, EMA 0.9999,
self-conditioning 0.9, gamma = 1 - t for training and cosine for sampling) is the
ImageNet-64 recipe. Chen 2023 shows 512+ samples with classifier-free guidance 3
(set sample.guidance = 3.0 for those); FID here is measured without guidance.
"""

import ml_collections

from configs import imagenet64


def get_config() -> ml_collections.ConfigDict:
  """Returns the ImageNet-1024 configuration."""
  config = imagenet64.get_config()
  config.data.image_size = 1024

  model = config.model
  model.patch_size = 32
  model.num_latents = 256
  model.latent_dim = 1024
  model.tape_dim = 768
  model.num_blocks = 6
  model.num_compute_layers = 4
  model.dtype = 'bfloat16'  # compute dtype; parameters stay float32.
  model.remat = True

  config.diffusion.scale = 0.5  # input scale b (tune).

  config.training.batch_size = 512
  config.training.num_steps = 1_000_000
  return config
