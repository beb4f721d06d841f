"""Exact denoisers D(x; sigma) = E[x0 | x0 + sigma n = x] for known data distributions.

With an exact denoiser a sampler's output distribution is known in advance, so
samplers can be checked without training anything (EDM section 3 uses the same
idea). Data points have an event shape E (e.g. [2] or [H, W, C]); inputs x have
shape [*batch, *E]; sigma is a scalar or has shape [*batch].

Source: Karras et al. 2022 (EDM), eq. 3 and appendix B.3 (the ideal denoiser of
a finite data set is a softmax-weighted mean of the points).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Denoiser = Callable[[jax.Array, jax.typing.ArrayLike], jax.Array]


def _flatten(x: jax.Array, event_ndim: int) -> tuple[jax.Array, tuple[int, ...]]:
  batch = x.shape[: x.ndim - event_ndim]
  return x.reshape(*batch, -1), batch


def _sigma_column(sigma: jax.typing.ArrayLike, batch: tuple[int, ...]) -> jax.Array:
  """sigma as [*batch, 1] (scalar or per-example input)."""
  s = jnp.asarray(sigma, jnp.float32)
  return jnp.broadcast_to(s, batch)[..., None]


class GaussianMixture:
  """A Gaussian mixture with isotropic or diagonal components.

  Attributes:
    weights: [K] component probabilities (normalized here).
    means: [K, *E] component means.
    variances: [K, D] per-dimension component variances (D = prod(E)).
  """

  def __init__(self, weights, means, stds):
    weights = np.asarray(weights, np.float64)
    means = np.asarray(means, np.float64)
    stds = np.asarray(stds, np.float64)
    if weights.ndim != 1 or weights.size < 1 or np.any(weights <= 0):
      raise ValueError(f'weights must be a 1-D array of K >= 1 positive numbers; got {weights}.')
    k = weights.shape[0]
    if means.ndim < 2 or means.shape[0] != k:
      raise ValueError(
        f'means must have shape [K, *event_shape] with K = {k} (one row per weight); '
        f'got {means.shape}.'
      )
    self.event_shape = means.shape[1:]
    dim = int(np.prod(self.event_shape))
    if stds.shape == (k,):  # isotropic components
      stds = np.repeat(stds[:, None], dim, axis=1)
    elif stds.shape == means.shape:  # diagonal components
      stds = stds.reshape(k, dim)
    else:
      raise ValueError(
        f'stds must have shape [K] = ({k},) (isotropic) or [K, *event_shape] = '
        f'{means.shape} (diagonal); got {stds.shape}.'
      )
    if np.any(stds <= 0):
      raise ValueError('stds must be positive.')
    self.weights = weights / weights.sum()
    self.means = means
    self.variances = stds**2

  @property
  def dim(self) -> int:
    return int(np.prod(self.event_shape))

  def log_responsibilities(self, x: jax.Array, sigma: jax.typing.ArrayLike = 0.0) -> jax.Array:
    """log p(component k | x) for x = x0 + sigma n; shape [*batch, K]."""
    xf, batch = _flatten(jnp.asarray(x, jnp.float32), len(self.event_shape))  # [*b, D]
    s2 = _sigma_column(sigma, batch)[..., None] ** 2  # [*b, 1, 1]
    mu = jnp.asarray(self.means.reshape(self.weights.size, -1), jnp.float32)  # [K, D]
    var = jnp.asarray(self.variances, jnp.float32) + s2  # [*b, K, D]
    diff = xf[..., None, :] - mu  # [*b, K, D]
    log_lik = -0.5 * jnp.sum(diff**2 / var + jnp.log(var), axis=-1)  # [*b, K]
    logits = log_lik + jnp.log(jnp.asarray(self.weights, jnp.float32))
    return logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)

  def denoise(self, x: jax.Array, sigma: jax.typing.ArrayLike) -> jax.Array:
    """D(x; sigma): responsibility-weighted component posterior means; shape of x."""
    x = jnp.asarray(x, jnp.float32)
    xf, batch = _flatten(x, len(self.event_shape))  # [*b, D]
    s2 = _sigma_column(sigma, batch)[..., None] ** 2  # [*b, 1, 1]
    mu = jnp.asarray(self.means.reshape(self.weights.size, -1), jnp.float32)  # [K, D]
    v = jnp.asarray(self.variances, jnp.float32)  # [K, D]
    # Component posterior mean mu + v / (v + s^2) (x - mu), written so s = 0 gives x.
    post_mean = (s2 * mu + v * xf[..., None, :]) / (v + s2)  # [*b, K, D]
    resp = jnp.exp(self.log_responsibilities(x, sigma))  # [*b, K]
    out = jnp.sum(resp[..., None] * post_mean, axis=-2)  # [*b, D]
    return out.reshape(x.shape)

  def sample(self, rng: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
    """Draws `num` points; returns (x [num, *E], component index [num])."""
    k_rng, n_rng = jax.random.split(rng)
    comp = jax.random.choice(k_rng, self.weights.size, (num,), p=jnp.asarray(self.weights))
    noise = jax.random.normal(n_rng, (num, self.dim))
    mu = jnp.asarray(self.means.reshape(self.weights.size, -1), jnp.float32)
    std = jnp.sqrt(jnp.asarray(self.variances, jnp.float32))
    x = mu[comp] + std[comp] * noise
    return x.reshape(num, *self.event_shape), comp

  def summary(self, x: jax.typing.ArrayLike) -> dict[str, np.ndarray]:
    """Per-component statistics of samples x [N, *E], assigned to their likeliest component.

    Returns float64 numpy arrays: 'weights' [K] (fractions), 'counts' [K],
    'means' [K, D] and 'variances' [K, D] (NaN for an empty component).
    """
    x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)  # [N, D]
    xe = jnp.asarray(x.reshape(-1, *self.event_shape), jnp.float32)
    comp = np.asarray(jnp.argmax(self.log_responsibilities(xe), -1))
    k = self.weights.size
    counts = np.bincount(comp, minlength=k).astype(np.float64)
    means = np.full((k, x.shape[1]), np.nan)
    variances = np.full((k, x.shape[1]), np.nan)
    for j in range(k):
      xj = x[comp == j]
      if xj.shape[0] > 1:
        means[j], variances[j] = xj.mean(0), xj.var(0, ddof=1)
    return {
      'weights': counts / x.shape[0],
      'counts': counts,
      'means': means,
      'variances': variances,
    }


def gaussian_mixture_denoiser(weights, means, stds) -> Denoiser:
  """Exact denoiser of a Gaussian mixture, `D(x, sigma) -> x0_hat`.

  Args:
    weights: [K] mixture weights (normalized here).
    means: [K, *E] component means.
    stds: [K] isotropic or [K, *E] diagonal component standard deviations.

  Returns:
    A stateless EDM-form denoiser. `GaussianMixture(...)` gives sampling and
    responsibilities too.
  """
  return GaussianMixture(weights, means, stds).denoise


def point_set_denoiser(points: jax.typing.ArrayLike) -> Denoiser:
  """Exact denoiser of the uniform distribution over a finite point set.

  D(x; sigma) = sum_n softmax_n(-|x - p_n|^2 / (2 sigma^2)) p_n.

  Source: Karras et al. 2022 (EDM), appendix B.3, eq. 57.

  Args:
    points: [N, *E] the data set.

  Returns:
    A stateless EDM-form denoiser `D(x, sigma)` for x of shape [*batch, *E].
  """
  pts = np.asarray(points, np.float32)
  if pts.ndim < 2 or pts.shape[0] < 1:
    raise ValueError(f'points must have shape [N, *event_shape] with N >= 1; got {pts.shape}.')
  event_ndim = pts.ndim - 1
  flat = jnp.asarray(pts.reshape(pts.shape[0], -1))  # [N, D]
  half_sq = 0.5 * jnp.sum(flat**2, axis=-1)  # [N]

  def denoise(x: jax.Array, sigma: jax.typing.ArrayLike) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    xf, batch = _flatten(x, event_ndim)  # [*b, D]
    s2 = jnp.maximum(_sigma_column(sigma, batch) ** 2, 1e-20)  # [*b, 1]
    # -|x - p|^2 / (2 s^2) up to a term constant in n, which softmax ignores.
    logits = (xf @ flat.T - half_sq) / s2  # [*b, N]
    w = jax.nn.softmax(logits, axis=-1)
    return (w @ flat).reshape(x.shape)

  return denoise
