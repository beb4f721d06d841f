"""NCSNv2's published LSUN tower checkpoint (ermongroup/ncsnv2, exp/logs/tower), sampled here.

Launch (convert the reference's run directory: checkpoint.pth or its latest
checkpoint_<step>.pth with the config.yml beside it; then sample):

    python -m diffusion_jax.convert --from=ncsnv2 --input=exp/logs/tower \
        --workdir=workdir/ncsnv2_tower
    python main.py --config=configs/ncsnv2_tower.py --workdir=workdir/ncsnv2_tower --mode=sample

The reference's `configs/tower.yml`: NCSNv2Deeper RefineNet (ngf = 128) on 128x128 images
in [0, 1]; sigmas 190.0 -> 0.01 with L = 1086 levels; annealed Langevin dynamics with T =
3, eps = 1.8e-6 and the final denoising step (1086 x 3 + 1 network evaluations) on the EMA
weights (0.999); trained with Adam 1e-4 (eps 1e-8), batch 128, 150k steps. Training needs
the images as a folder (--config.data.folder=...), center-cropped to 128x128 as the
reference's data set.
"""

import ml_collections

from configs import cifar10_ncsnv2


def get_config() -> ml_collections.ConfigDict:
  """Returns the configuration of the converted LSUN tower checkpoint."""
  return cifar10_ncsnv2.folder_config(
    'data/tower',
    128,
    'NCSNv2Deeper',
    sigma_begin=190.0,
    num_classes=1086,
    step_lr=1.8e-6,
    n_steps_each=3,
    n_iters=150_000,
    batch_size=128,
    adam_eps=1e-8,
  )
