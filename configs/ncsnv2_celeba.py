"""NCSNv2's published CelebA checkpoint (ermongroup/ncsnv2, exp/logs/celeba), sampled here.

Launch (convert the reference's run directory: checkpoint.pth or its latest
checkpoint_<step>.pth with the config.yml beside it; then sample):

    python -m diffusion_jax.convert --from=ncsnv2 --input=exp/logs/celeba \
        --workdir=workdir/ncsnv2_celeba
    python main.py --config=configs/ncsnv2_celeba.py --workdir=workdir/ncsnv2_celeba --mode=sample

The reference's `configs/celeba.yml`: NCSNv2 RefineNet (ngf = 128) on 64x64 images in [0,
1]; sigmas 90.0 -> 0.01 with L = 500 levels; annealed Langevin dynamics with T = 5, eps =
3.3e-6 and the final denoising step (500 x 5 + 1 network evaluations) on the EMA weights
(0.999); trained with Adam 1e-4 (eps 1e-8), batch 128, 210k steps. Training needs the
images as a folder (--config.data.folder=...), center-cropped to 64x64 as the reference's
data set.
"""

import ml_collections

from configs import cifar10_ncsnv2


def get_config() -> ml_collections.ConfigDict:
  """Returns the configuration of the converted CelebA checkpoint."""
  return cifar10_ncsnv2.folder_config(
    'data/celeba',
    64,
    'NCSNv2',
    sigma_begin=90.0,
    num_classes=500,
    step_lr=3.3e-6,
    n_steps_each=5,
    n_iters=210_000,
    batch_size=128,
    adam_eps=1e-8,
  )
