"""Denoiser adapters: stateless/stateful forms and classifier-free guidance.

Samplers accept a denoiser in EDM form, in data space (x = x0 + sigma * n):
- stateless: `denoise_fn(x, sigma) -> x0_hat` (pass `init_state=None`), or
- stateful: `denoise_fn(x, sigma, state) -> (x0_hat, new_state)` with an
  `init_state` pytree, the state being carried from one call to the next
  (self-conditioning: RIN's latents, a U-Net's previous prediction).

`sigma` is passed as a scalar array (one noise level for the whole batch);
denoisers broadcast it themselves. iDDPM's learned-variance denoisers return
`(x0_hat, v)` in place of `x0_hat`, with v in [-1, 1].
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

StatefulDenoiser = Callable[[jax.Array, jax.Array, Any], tuple[Any, Any]]
GUIDANCE_CARRIES = ('conditional', 'separate')


def as_stateful(
  denoise_fn: Callable[..., Any], init_state: Any = None
) -> tuple[StatefulDenoiser, Any]:
  """Puts a denoiser into the stateful form every sampler loop runs on.

  Args:
    denoise_fn: `(x, sigma) -> out` when `init_state` is None, else
      `(x, sigma, state) -> (out, new_state)`.
    init_state: the starting state of a stateful denoiser, or None.

  Returns:
    `(fn, state)` where `fn(x, sigma, state) -> (out, new_state)`; a stateless
    denoiser gets the empty state `()`.
  """
  if not callable(denoise_fn):
    raise ValueError(f'denoise_fn must be callable; got {type(denoise_fn).__name__}.')
  if init_state is None:

    def fn(x, sigma, state):
      return denoise_fn(x, sigma), state

    return fn, ()
  return denoise_fn, init_state


def x0_of(out: Any) -> jax.Array:
  """The x0 estimate of a denoiser output (`x0` or `(x0, v)`)."""
  return out[0] if isinstance(out, tuple) else out


def _guide(cond: Any, uncond: Any, weight: jax.Array) -> Any:
  """(1 + w) D(x | c) - w D(x); extra outputs (iDDPM's v) come from the conditional pass."""
  x0_c, x0_u = x0_of(cond), x0_of(uncond)
  guided = x0_c + weight * (x0_c - x0_u)
  return (guided, *cond[1:]) if isinstance(cond, tuple) else guided


def _split2(tree: Any) -> tuple[Any, Any]:
  first = jax.tree.map(lambda a: a[: a.shape[0] // 2], tree)
  second = jax.tree.map(lambda a: a[a.shape[0] // 2 :], tree)
  return first, second


def _concat2(a: Any, b: Any) -> Any:
  return jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


def classifier_free_guidance(
  denoise_fn: Callable[..., Any],
  label: jax.typing.ArrayLike | None,
  weight: jax.typing.ArrayLike = 0.0,
  *,
  init_state: Any = None,
  null_label: int = -1,
  batched: bool = True,
  carry: str = 'conditional',
) -> tuple[Callable[..., Any], Any]:
  """Turns a label-conditional denoiser into a guided one.

  D_w(x; sigma) = (1 + w) D(x; sigma, c) - w D(x; sigma, null). Because
  x0 = x - sigma * eps is affine in the prediction, guiding x0 equals guiding
  eps with the same weight. w = 0 is the plain conditional denoiser (one pass).

  With a stateful (self-conditioned) denoiser, `carry='conditional'` (the default, as the
  Chen 2023 / RIN reference sampler does) feeds both passes the conditional branch's
  previous state and carries only the conditional pass's new state; `carry='separate'`
  (an option) lets each branch carry its own state.

  Source: Ho & Salimans 2021 (classifier-free guidance), eq. 6; Chen 2023
  section 4 (guidance weight 3 for the 512+ samples); the shared carry follows the
  authors' `diffusion_utils.Scheduler.generate` (google-research/pix2seq), whose
  unconditional call reads the hidden state that only the conditional call updates.

  Args:
    denoise_fn: `(x, sigma, label) -> out` when `init_state` is None, else
      `(x, sigma, label, state) -> (out, new_state)`. `label` is int32 [B],
      -1 = no label (the null label).
    label: int32 [B] class labels, x's leading axis being B.
    weight: guidance weight w >= 0 (a Python number or a traced scalar).
    init_state: starting state of a stateful (self-conditioning) denoiser, or None.
    null_label: the label meaning "unconditional".
    batched: run the conditional and unconditional passes as one call on a
      doubled batch (faster on accelerators) instead of two calls.
    carry: 'conditional' (both passes read the conditional branch's state) or
      'separate' (each branch keeps its own); only matters with `init_state`.

  Returns:
    `(guided_fn, guided_init_state)`, ready for any sampler: `guided_fn(x, sigma)`
    when `init_state` is None, else `guided_fn(x, sigma, state)`, the state being the
    conditional branch's (`carry='conditional'`) or the pair `(state_cond, state_uncond)`
    (`carry='separate'`).

  Raises:
    ValueError: guidance weight given without labels, a negative weight, or an unknown
      carry.
  """
  if carry not in GUIDANCE_CARRIES:
    raise ValueError(f'carry must be one of {GUIDANCE_CARRIES}; got {carry!r}.')
  w_static = None
  if not isinstance(weight, jax.core.Tracer):
    w_static = float(weight)
    if w_static < 0:
      raise ValueError(f'weight (the guidance weight w) must be >= 0; got {w_static}.')
  if label is None:
    if w_static == 0.0:
      raise ValueError(
        'label is None: a label-conditional denoiser needs labels; pass label=-1 for every '
        'example to sample unconditionally.'
      )
    raise ValueError(
      f'classifier-free guidance (weight={weight!r}) needs class labels: pass label '
      '(int32 [B], -1 = null) or set weight=0.'
    )
  label = jnp.asarray(label, jnp.int32)
  stateful = init_state is not None

  def call(x, sigma, lab, state):
    if stateful:
      return denoise_fn(x, sigma, lab, state)
    return denoise_fn(x, sigma, lab), state

  if w_static == 0.0:
    if stateful:
      return (lambda x, sigma, state: call(x, sigma, label, state)), init_state
    return (lambda x, sigma: denoise_fn(x, sigma, label)), None

  null = jnp.full_like(label, null_label)
  w = jnp.asarray(weight, jnp.float32)

  def guided_pair(x, sigma, state):
    state_c, state_u = state
    if batched:
      both, new_state = call(
        _concat2(x, x), sigma, jnp.concatenate([label, null]), _concat2(state_c, state_u)
      )
      cond, uncond = _split2(both)
      new_c, new_u = _split2(new_state)
    else:
      cond, new_c = call(x, sigma, label, state_c)
      uncond, new_u = call(x, sigma, null, state_u)
    return _guide(cond, uncond, w), (new_c, new_u)

  if not stateful:
    return (lambda x, sigma: guided_pair(x, sigma, ((), ()))[0]), None
  if carry == 'separate':
    return guided_pair, (init_state, init_state)

  def guided_shared(x, sigma, state):
    out, (new_c, _) = guided_pair(x, sigma, (state, state))
    return out, new_c

  return guided_shared, init_state
