"""Shared builder of the ImageNet 128-1024 configs: pixel-space RIN with input scaling.

Unverified sizes: the architecture, input scale b and run length follow this project's
scaling rule (RIN_CONFIGS.md, "Higher resolutions", rows marked *ours*), not a
published table. The rule keeps the interface at 1024 tokens by growing the patch,
lets the latents carry the compute, and uses a noisier process (smaller b) for larger
images, as Chen 2023 found necessary. Treat b and the widths as tunable defaults.
Everything else (LAMB with `cosine@0.7`, warmup 10k, EMA 0.9999, self-conditioning 0.9,
gamma = 1 - t for training and cosine for sampling) is the ImageNet-64 recipe, except two
settings that follow from b < 1: the noisy input is normalized per example (Chen 2023,
Sec. 3: its variance is (b^2 - 1) gamma + 1, not 1), and labels are dropped 10% of the
time (ours) so that classifier-free guidance is available: Chen 2023 shows 512+ samples
with guidance 3 (set sample.guidance = 3.0 for those); FID here is measured without
guidance.
"""

import ml_collections

from configs import imagenet64


def highres_config(
  image_size: int,
  *,
  patch_size: int,
  num_latents: int,
  latent_dim: int,
  tape_dim: int,
  num_blocks: int,
  num_compute_layers: int,
  remat: bool,
  scale: float,
  batch_size: int,
  num_steps: int,
) -> ml_collections.ConfigDict:
  """The ImageNet-64 recipe at `image_size` with the given RIN sizes (bfloat16 compute)."""
  config = imagenet64.get_config()
  config.data.image_size = image_size
  model = config.model
  model.patch_size = patch_size
  model.num_latents = num_latents
  model.latent_dim = latent_dim
  model.tape_dim = tape_dim
  model.num_blocks = num_blocks
  model.num_compute_layers = num_compute_layers
  model.dtype = 'bfloat16'  # compute dtype; parameters stay float32.
  model.remat = remat
  config.diffusion.scale = scale  # input scale b (tune).
  config.diffusion.normalize = 'per_example'  # Chen 2023, Sec. 3: needed when b != 1.
  config.diffusion.label_drop_prob = 0.1  # ours: enables guidance (Chen 2023 uses w = 3).
  config.training.batch_size = batch_size
  config.training.num_steps = num_steps
  return config
