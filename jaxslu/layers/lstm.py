"""Uni-directional LSTM (optionally with an output projection, "LSTMP") as one `lax.scan`.

Gates are ordered (input, forget, cell, output); the forget-gate bias starts at 1. For speed on
CPU the input-to-gate product for all time steps is one large matmul before the scan, so each scan
step does only the [B, P] x [P, 4H] recurrent product. Padded steps (t >= length) keep the state
unchanged and output zeros, so a row's final state and valid outputs do not depend on padding.

Parameters: input kernel [F, 4H] ("embed", "lstm_gates"), recurrent kernel [P, 4H]
(None, "lstm_gates"), bias [4H] ("lstm_gates",), projection [H, P] ("lstm_gates", "embed").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslu.layers.core import length_mask, param

LSTMState = tuple[jax.Array, jax.Array]  # (h [B, P], c [B, H])


def _bias_init(hidden: int):
    def init(key, shape, dtype):
        return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)
    return init


class LSTM(nnx.Module):
    """x [B, T, F] -> y [B, T, P] (P = projection or hidden) and the final (h, c)."""

    def __init__(self, in_features: int, hidden: int, *, projection: int | None = None,
                 rngs: nnx.Rngs):
        self.hidden = hidden
        self.out_features = projection or hidden
        self.input_kernel = param(rngs, nnx.initializers.lecun_normal(), (in_features, 4 * hidden),
                                  ("embed", "lstm_gates"))
        self.recurrent_kernel = param(rngs, nnx.initializers.orthogonal(),
                                      (self.out_features, 4 * hidden), (None, "lstm_gates"))
        self.bias = param(rngs, _bias_init(hidden), (4 * hidden,), ("lstm_gates",))
        self.projection = (param(rngs, nnx.initializers.lecun_normal(), (hidden, projection),
                                 ("lstm_gates", "embed")) if projection else None)

    def init_state(self, batch: int) -> LSTMState:
        return (jnp.zeros((batch, self.out_features), jnp.float32),
                jnp.zeros((batch, self.hidden), jnp.float32))

    def _cell(self, gates_x: jax.Array, state: LSTMState) -> LSTMState:
        h, c = state
        gates = gates_x + h @ self.recurrent_kernel[...]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        if self.projection is not None:
            h = h @ self.projection[...]
        return h, c

    def step(self, x: jax.Array, state: LSTMState) -> tuple[jax.Array, LSTMState]:
        """One time step: x [B, F] -> (y [B, P], new state)."""
        h, c = self._cell(x @ self.input_kernel[...] + self.bias[...], state)
        return h, (h, c)

    def __call__(self, x: jax.Array, lengths: jax.Array | None = None,
                 initial_state: LSTMState | None = None) -> tuple[jax.Array, LSTMState]:
        b, t, _ = x.shape
        state = initial_state if initial_state is not None else self.init_state(b)
        gates_x = x @ self.input_kernel[...] + self.bias[...]  # [B, T, 4H], one matmul
        valid = (length_mask(lengths, t) if lengths is not None else jnp.ones((b, t), bool))

        def body(carry, inputs):
            g_t, v_t = inputs
            h, c = self._cell(g_t, carry)
            keep = v_t[:, None]
            new = (jnp.where(keep, h, carry[0]), jnp.where(keep, c, carry[1]))
            return new, jnp.where(keep, h, 0.0)

        state, ys = jax.lax.scan(body, state, (jnp.swapaxes(gates_x, 0, 1), valid.T))
        return jnp.swapaxes(ys, 0, 1), state
