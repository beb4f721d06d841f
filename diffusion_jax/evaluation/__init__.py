"""Sample-quality and likelihood evaluation: FID, Inception Score, precision/recall, NLL, digits.

`evaluate(config, workdir, sample_fn)` is what `main.py --mode=eval` calls. The package attribute
`evaluate` is that function; the module of the same name is
`importlib.import_module('diffusion_jax.evaluation.evaluate')`. Its samples are drawn over every
host in shards that stay on disk and survive a kill (streaming.py, shards.py).
"""

from diffusion_jax.evaluation.evaluate import EvalSettings, evaluate
from diffusion_jax.evaluation.frechet import RunningStatistics, feature_statistics, frechet_distance
from diffusion_jax.evaluation.inception import (
  InceptionFeatureExtractor,
  InceptionV3,
  InceptionWeightsNotFoundError,
  load_inception_variables,
)
from diffusion_jax.evaluation.reference_stats import load_reference_stats, save_reference_stats

__all__ = [
  'EvalSettings',
  'InceptionFeatureExtractor',
  'InceptionV3',
  'InceptionWeightsNotFoundError',
  'RunningStatistics',
  'evaluate',
  'feature_statistics',
  'frechet_distance',
  'load_inception_variables',
  'load_reference_stats',
  'save_reference_stats',
]
