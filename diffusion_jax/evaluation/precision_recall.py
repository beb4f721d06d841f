"""Improved precision and recall of generative models (k-nearest-neighbour manifolds).

Each feature set defines a manifold: the union of balls around its points whose radius is the
distance to the point's k-th nearest neighbour in the same set. Precision is the fraction of
generated points inside the real manifold; recall the fraction of real points inside the
generated one.

Source: Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
Generative Models", Eq. 1-3 (k = 3).
"""

from __future__ import annotations

import numpy as np


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  # [A, B] via the Gram trick; float64 accumulation of the norms keeps small distances >= 0.
  sq = (
    np.sum(a.astype(np.float64) ** 2, axis=1)[:, None]
    + np.sum(b.astype(np.float64) ** 2, axis=1)[None, :]
    - 2.0 * (a @ b.T).astype(np.float64)
  )
  return np.maximum(sq, 0.0)


def knn_radii(features: np.ndarray, k: int = 3, batch_size: int = 1024) -> np.ndarray:
  """Distance of each point to its k-th nearest other point in the same set.

  Args:
    features: [N, D] features.
    k: neighbour rank (the paper uses 3).
    batch_size: rows per distance block (memory is batch_size * N floats).

  Returns:
    [N] radii (float64).
  """
  features = np.asarray(features, np.float32)
  n = features.shape[0]
  if features.ndim != 2:
    raise ValueError(f'features must be [N, D]; got shape {features.shape}.')
  if not 1 <= k < n:
    raise ValueError(f'k must be in [1, N-1={n - 1}]; got {k}.')
  radii = np.empty(n, np.float64)
  for start in range(0, n, batch_size):
    sq = _squared_distances(features[start : start + batch_size], features)
    # The point itself is at distance 0 and takes rank 0, so rank k is its k-th neighbour.
    radii[start : start + batch_size] = np.sqrt(np.partition(sq, k, axis=1)[:, k])
  return radii


def manifold_coverage(
  query: np.ndarray, reference: np.ndarray, reference_radii: np.ndarray, batch_size: int = 1024
) -> float:
  """Fraction of query points inside at least one reference ball."""
  query = np.asarray(query, np.float32)
  reference = np.asarray(reference, np.float32)
  inside = np.zeros(query.shape[0], bool)
  sq_radii = np.asarray(reference_radii, np.float64)[None, :] ** 2
  for start in range(0, query.shape[0], batch_size):
    sq = _squared_distances(query[start : start + batch_size], reference)
    inside[start : start + batch_size] = np.any(sq <= sq_radii, axis=1)
  return float(np.mean(inside))


def precision_recall(
  real: np.ndarray, fake: np.ndarray, k: int = 3, batch_size: int = 1024
) -> dict[str, float]:
  """Improved precision and recall of fake features [M, D] against real features [N, D].

  Source: Kynkaanniemi et al. 2019, Eq. 1-3.
  """
  real = np.asarray(real, np.float32)
  fake = np.asarray(fake, np.float32)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(
      f'real and fake must be [N, D] with the same D; got {real.shape}, {fake.shape}.'
    )
  real_radii = knn_radii(real, k, batch_size)
  fake_radii = knn_radii(fake, k, batch_size)
  return {
    'precision': manifold_coverage(fake, real, real_radii, batch_size),
    'recall': manifold_coverage(real, fake, fake_radii, batch_size),
  }
