"""Parameter-holding building blocks whose every `nnx.Param` names its dimensions.

Each parameter is created as `nnx.Param(value, logical_axes=(...))`; `jaxslu.parallel.mesh` maps
those names to mesh axes through `MeshConfig.rules` (names without a rule stay replicated). The
modules are written directly on `nnx.Param` rather than wrapping `nnx.Linear`/`nnx.Embed` so the
metadata is explicit and the modules hold nothing but parameters (no stored RNG streams): dropout
keys come from the `rngs` passed at call time.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu, "swish": jax.nn.swish,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Look up an activation by name (tanh, relu, gelu, swish)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def param(rngs: nnx.Rngs, init: Callable, shape: Sequence[int], axes: Axes) -> nnx.Param:
    """A parameter initialized with `init(key, shape)` and tagged with `logical_axes=axes`."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match parameter shape {tuple(shape)}")
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), logical_axes=tuple(axes))


def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def _ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


class Dense(nnx.Module):
    """y = x @ kernel + bias over the last axis; kernel [in, out] with logical axes `axes`."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
                 axes: tuple[str | None, str | None] = ("embed", "mlp"), use_bias: bool = True,
                 kernel_init: Callable | None = None):
        init = kernel_init or nnx.initializers.lecun_normal()
        self.kernel = param(rngs, init, (in_features, out_features), axes)
        self.bias = param(rngs, _zeros, (out_features,), (axes[1],)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class Embed(nnx.Module):
    """Token embedding table [num, dim] with logical axes ("vocab", "embed")."""

    def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs,
                 axes: tuple[str | None, str | None] = ("vocab", "embed"), stddev: float = 1.0):
        self.num_embeddings = num_embeddings
        self.embedding = param(rngs, nnx.initializers.normal(stddev), (num_embeddings, features),
                               axes)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis (scale and bias with logical axis `axis`)."""

    def __init__(self, features: int, *, rngs: nnx.Rngs, axis: str | None = "embed",
                 epsilon: float = 1e-5):
        self.scale = param(rngs, _ones, (features,), (axis,))
        self.bias = param(rngs, _zeros, (features,), (axis,))
        self.epsilon = epsilon

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        return y * self.scale[...] + self.bias[...]


def stream_key(rngs: nnx.Rngs, name: str) -> jax.Array:
    """The next key of stream `name` of `rngs`, with an error that says what to pass."""
    try:
        return getattr(rngs, name)()
    except AttributeError as e:
        raise ValueError(f"train=True with rngs that have no {name!r} stream; pass "
                         f"nnx.Rngs(dropout=key, augment=key2) (or rngs=None for no "
                         "randomness)") from e


def dropout(x: jax.Array, rate: float, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout, active only when `train` and `rngs` is given (key from `rngs.dropout`).

    A function instead of `nnx.Dropout` so that no module stores an RNG stream: the model's state
    stays pure `nnx.Param`.
    """
    if not train or rngs is None or rate <= 0.0:
        return x
    if rate >= 1.0:
        raise ValueError(f"dropout rate {rate} must be < 1")
    keep = jax.random.bernoulli(stream_key(rngs, "dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def length_mask(lengths: jax.Array, size: int) -> jax.Array:
    """[B, size] bool: position < length."""
    return jnp.arange(size)[None, :] < lengths[:, None]
