"""The exact Gaussian-mixture test problem shared by the sampler tests.

A 2-D mixture of three diagonal Gaussians whose noised density is known in closed form,
so D(x; sigma) = E[x0 | x] is exact (`MIXTURE.denoise`, and `np_denoise` in float64 for
the independent reference transcriptions), and a sampler's output distribution can be
compared with the mixture itself (`assert_matches_mixture`).
"""

import numpy as np

from diffusion_jax import samplers

# Three well-separated components in 2-D, one with diagonal covariance.
WEIGHTS = np.array([0.2, 0.3, 0.5])
MEANS = np.array([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]])
STDS = np.array([[0.10, 0.15], [0.20, 0.12], [0.15, 0.15]])
MIXTURE = samplers.GaussianMixture(WEIGHTS, MEANS, STDS)
NUM = 4000


def mixture_posterior_mean_np(x, sigma, weights, means, variances):
  """float64 Bayes: sum_k p(k|x) E[x0 | x, k] for diagonal Gaussian components.

  x [N, D], sigma [N]; weights [K], means / variances [K, D].
  """
  var = variances[None] + sigma[:, None, None] ** 2  # [N, K, D]
  diff = x[:, None] - means[None]
  log_lik = -0.5 * np.sum(diff**2 / var + np.log(2 * np.pi * var), -1) + np.log(weights)
  resp = np.exp(log_lik - log_lik.max(1, keepdims=True))
  resp /= resp.sum(1, keepdims=True)
  post = means[None] + variances[None] / var * diff
  return np.sum(resp[..., None] * post, 1)


def np_denoise(x, sigma):
  """float64 exact denoiser of the test mixture: x [N, 2], sigma scalar or [N] -> x0 [N, 2]."""
  x = np.asarray(x, np.float64)
  sigma = np.broadcast_to(np.asarray(sigma, np.float64), x.shape[:1])
  return mixture_posterior_mean_np(x, sigma, WEIGHTS, MEANS, STDS**2)


def assert_matches_mixture(gm, x, mean_bias=0.01, var_bias=0.03, weight_bias=0.005):
  """Component weights, means and variances within 4.5 standard errors (+ a bias allowance)."""
  st = gm.summary(x)
  n = np.shape(x)[0]
  w = gm.weights
  np.testing.assert_array_less(
    np.abs(st['weights'] - w), 4.5 * np.sqrt(w * (1 - w) / n) + weight_bias
  )
  nk = st['counts'][:, None]
  se_mean = np.sqrt(gm.variances / nk)
  np.testing.assert_array_less(
    np.abs(st['means'] - gm.means.reshape(w.size, -1)), 4.5 * se_mean + mean_bias
  )
  np.testing.assert_array_less(
    np.abs(st['variances'] / gm.variances - 1),
    np.broadcast_to(4.5 * np.sqrt(2 / (nk - 1)) + var_bias, gm.variances.shape),
  )
