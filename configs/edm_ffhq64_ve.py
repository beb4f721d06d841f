"""EDM's released unconditional FFHQ 64x64 NCSN++ network (edm-ffhq-64x64-uncond-ve.pkl).

Launch (the released checkpoint, then sampling or FID):

    python -m diffusion_jax.convert --from=edm --input=edm-ffhq-64x64-uncond-ve.pkl \
      --config=configs/edm_ffhq64_ve.py --workdir=workdir/edm_ffhq64_ve
    python main.py --config=configs/edm_ffhq64_ve.py --workdir=workdir/edm_ffhq64_ve --mode=sample

EDMPrecond(SongUNet NCSN++, channel multipliers 1, 2, 2, 2, dropout 0.05, 9 augmentation
labels fed zeros at sampling), trained with EDM's preconditioning and loss: train.py
--cond=0 --arch=ncsnpp --batch=256 --cres=1,2,2,2 --lr=2e-4 --dropout=0.05 --augment=0.15.
Sampler: deterministic Heun, 40 steps (NFE 79), sigma 0.002 -> 80, rho 7. Published: FID
2.53 (EDM Table 2; 50k images, min of 3 seeds). Training from scratch reads the images
from --config.data.folder (64x64, as EDM's dataset_tool.py writes them).
"""

import ml_collections

from configs import cifar10_edm


def get_config() -> ml_collections.ConfigDict:
  """Returns the configuration of the released checkpoint."""
  return cifar10_edm.faces_64x64('data/ffhq-64x64', 'ncsnpp', 0.05)
