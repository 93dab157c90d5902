"""The per-t readout of the Table 1 models, h @ kernel[t] + bias[t], and how it runs.

What it computes is the gather (one kernel per example). When the caller
says that t is a stratified draw (diffusion.stratified_t: example i has
t = 1 + (i + offset) mod (T-1)) and T-1 divides the batch, the batch is
read out block by block instead: one batched matmul per t and a
hand-written backward pass, several times faster on the CPU than a kernel
gathered per example and its scatter-add backward. The choice is made when
the function is traced, from the caller's word and the batch's shape; it
holds for any slice of a stratified batch whose length T-1 divides (a
micro-batch, a device's part), whose offset is then its first t minus 1.
The model (dpm_jax.heartbeat.PerStepDense) calls `per_step_readout`.
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
  """(dh, -, dkernel, dbias); the kernel's as a sum of B/(T-1) outer products per t,
  several times faster on the CPU than XLA's batched dot."""
  h, offset, kernel = res
  n = kernel.shape[0] - 1
  hc, gc = _columns(h, n, offset), _columns(g, n, offset)
  dkernel = jnp.sum(hc[:, :, :, None] * gc[:, :, None, :], axis=0)
  dh = jnp.einsum("jco,cko->jck", gc, kernel[1:])
  zero = jnp.zeros((1,) + kernel.shape[1:], kernel.dtype)
  return (_uncolumns(dh, offset), None, jnp.concatenate([zero, dkernel]),
          jnp.concatenate([zero[:, 0], jnp.sum(gc, axis=0)]))


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def reads_in_blocks(batch_size: int, trajectory_length: int, stratified: bool) -> bool:
  """Whether per_step_readout runs block by block: decided from static facts alone."""
  return stratified and batch_size > 0 and batch_size % (trajectory_length - 1) == 0


def per_step_readout(h, t, kernel, bias, *, stratified: bool = False):
  """h (B, K) @ kernel[t] (B, K, O) + bias[t], kernel (T, K, O), t (B,) integer.

  Args:
    h, t, kernel, bias: as above.
    stratified: the caller's word (static) that t is a stratified draw over
      these examples (diffusion.stratified_t); with T-1 dividing B they are
      read out block by block. The values are the gather's either way.
  """
  if reads_in_blocks(h.shape[0], kernel.shape[0], stratified):
    return _blocked(h, t[0] - 1, kernel, bias)
  return _gathered(h, t, kernel, bias)
