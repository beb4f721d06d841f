"""NCSNv2's published LSUN church_outdoor checkpoint (ermongroup/ncsnv2), sampled here.

Launch (convert the reference's run directory: checkpoint.pth or its latest
checkpoint_<step>.pth with the config.yml beside it; then sample):

    python -m diffusion_jax.convert --from=ncsnv2 --input=exp/logs/church \
        --workdir=workdir/ncsnv2_church
    python main.py --config=configs/ncsnv2_church.py --workdir=workdir/ncsnv2_church --mode=sample

The reference's `configs/church.yml`: NCSNv2Deeper RefineNet (ngf = 128) on 64x64 images
in [0, 1]; sigmas 140.0 -> 0.01 with L = 788 levels; annealed Langevin dynamics with T =
4, eps = 4.9e-6 and the final denoising step (788 x 4 + 1 network evaluations) on the EMA
weights (0.999); trained with Adam 1e-4 (eps 1e-8), batch 128, 200k steps. Training needs
the images as a folder (--config.data.folder=...), center-cropped to 64x64 as the
reference's data set.
"""

import ml_collections

from configs import cifar10_ncsnv2


def get_config() -> ml_collections.ConfigDict:
  """Returns the configuration of the converted LSUN church_outdoor checkpoint."""
  return cifar10_ncsnv2.folder_config(
    'data/church',
    64,
    'NCSNv2Deeper',
    sigma_begin=140.0,
    num_classes=788,
    step_lr=4.9e-6,
    n_steps_each=4,
    n_iters=200_000,
    batch_size=128,
    adam_eps=1e-8,
  )
