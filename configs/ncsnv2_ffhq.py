"""NCSNv2's published FFHQ checkpoint (ermongroup/ncsnv2, exp/logs/ffhq), sampled here.

Launch (convert the reference's run directory: checkpoint.pth or its latest
checkpoint_<step>.pth with the config.yml beside it; then sample):

    python -m diffusion_jax.convert --from=ncsnv2 --input=exp/logs/ffhq \
        --workdir=workdir/ncsnv2_ffhq
    python main.py --config=configs/ncsnv2_ffhq.py --workdir=workdir/ncsnv2_ffhq --mode=sample

The reference's `configs/ffhq.yml`: NCSNv2Deepest RefineNet (ngf = 128) on 256x256 images
in [0, 1]; sigmas 348.0 -> 0.01 with L = 2311 levels; annealed Langevin dynamics with T =
3, eps = 9e-7 and the final denoising step (2311 x 3 + 1 network evaluations) on the EMA
weights (0.999); trained with Adam 1e-4 (eps 1e-3), batch 32, 80k steps. Training needs
the images as a folder (--config.data.folder=...), center-cropped to 256x256 as the
reference's data set.
"""

import ml_collections

from configs import cifar10_ncsnv2


def get_config() -> ml_collections.ConfigDict:
  """Returns the configuration of the converted FFHQ checkpoint."""
  return cifar10_ncsnv2.folder_config(
    'data/ffhq',
    256,
    'NCSNv2Deepest',
    sigma_begin=348.0,
    num_classes=2311,
    step_lr=9e-7,
    n_steps_each=3,
    n_iters=80_000,
    batch_size=32,
    adam_eps=1e-3,
  )
