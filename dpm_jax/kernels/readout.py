"""The per-t readout of the Table 1 models, h @ kernel[t] + bias[t], and how it runs.

What it computes is the gather (one kernel per example). When t is a
stratified draw (diffusion.stratified_t) and T-1 divides the batch, the batch
is read out block by block instead, one batched matmul per t: several times
faster on the CPU than the gather and its scatter-add backward. Whether t is
stratified is read from t itself at run time (lax.cond), so callers pass t alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _gathered(h, t, kernel, bias):
  return jnp.einsum("bk,bko->bo", h, kernel[t]) + bias[t]


def _columns(x, n, offset):
  """(B, F) -> (B/n, n, F) rolled by offset: column c holds the examples with t = c + 1."""
  return jnp.roll(x.reshape(-1, n, x.shape[-1]), offset, axis=1)


def _uncolumns(x, offset):
  return jnp.roll(x, -offset, axis=1).reshape(-1, x.shape[-1])


@jax.custom_vjp
def _blocked(h, offset, kernel, bias):
  """The readout of t = stratified_t(offset, T, B), T-1 dividing B, block by block."""
  n = kernel.shape[0] - 1
  out = jnp.einsum("jck,cko->jco", _columns(h, n, offset), kernel[1:]) + bias[1:]
  return _uncolumns(out, offset)


def _blocked_fwd(h, offset, kernel, bias):
  return _blocked(h, offset, kernel, bias), (h, offset, kernel)


def _blocked_bwd(res, g):
  """(dh, -, dkernel, dbias); the kernel's as a sum of B/(T-1) outer products per t
  (faster on the CPU than XLA's batched dot)."""
  h, offset, kernel = res
  n = kernel.shape[0] - 1
  hc, gc = _columns(h, n, offset), _columns(g, n, offset)
  dkernel = jnp.sum(hc[:, :, :, None] * gc[:, :, None, :], axis=0)
  dh = jnp.einsum("jco,cko->jck", gc, kernel[1:])
  zero = jnp.zeros((1,) + kernel.shape[1:], kernel.dtype)
  return (_uncolumns(dh, offset), None, jnp.concatenate([zero, dkernel]),
          jnp.concatenate([zero[:, 0], jnp.sum(gc, axis=0)]))


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def reads_in_blocks(batch_size: int, trajectory_length: int) -> bool:
  """Whether a batch of this size can be read out block by block (T-1 divides it)."""
  return batch_size > 0 and batch_size % (trajectory_length - 1) == 0


def is_stratified(t, trajectory_length: int) -> jax.Array:
  """Whether t (B,) is a stratified draw: t_i = 1 + (t_0 - 1 + i) mod (T-1), every i."""
  n = trajectory_length - 1
  return jnp.all(t == 1 + (jnp.arange(t.shape[0]) + t[0] - 1) % n)


def per_step_readout(h, t, kernel, bias):
  """h (B, K) @ kernel[t] (B, K, O) + bias[t], kernel (T, K, O), t (B,) integer."""
  if not reads_in_blocks(h.shape[0], kernel.shape[0]):
    return _gathered(h, t, kernel, bias)
  return jax.lax.cond(is_stratified(t, kernel.shape[0]),
                      lambda h, t, k, b: _blocked(h, t[0] - 1, k, b), _gathered,
                      h, t, kernel, bias)
