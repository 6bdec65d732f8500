"""The same train step on 1 device and on 8 simulated CPU devices (data x fsdp x tensor meshes)
gives the same loss, metrics and gradients. Tolerance: the 8-device step reduces the
batch in a different order (per-shard partial sums), so fp32 results agree to ~1e-5 relative,
not bitwise."""
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxslu.config import MeshConfig, load_config
from jaxslu.parallel import mesh as mesh_lib
from jaxslu.train.loop import make_trainer
from jaxslu.slu.task import transducer_model_kwargs

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.multidevice


def _batch(B=8, N=6400, U=8, V=12, intents=10, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(N // 2, N + 1, B).astype(np.int32)
    audio = (0.1 * rng.normal(size=(B, N))).astype(np.float32)
    audio[np.arange(N)[None] >= lengths[:, None]] = 0
    tok_len = rng.integers(1, U + 1, B).astype(np.int32)
    tokens = rng.integers(1, V, (B, U)).astype(np.int32)
    tokens[np.arange(U)[None] >= tok_len[:, None]] = 0
    weight = np.ones(B, np.float32)
    weight[-1] = 0  # a padding row must not matter on either mesh
    return {"audio": audio, "audio_lengths": lengths, "tokens": tokens, "token_lengths": tok_len,
            "intent": rng.integers(0, intents, B).astype(np.int32),
            "slot_tags": np.where(tokens > 0, 0, -1).astype(np.int32),
            "speaker": np.zeros(B, np.int32), "index": np.arange(B, dtype=np.int32),
            "weight": weight}


def _run(cfg, devices, batch):
    trainer = make_trainer(cfg, transducer_model_kwargs(cfg, 12, 10, 1),
                           devices)
    state = trainer.init_state()
    gbatch = mesh_lib.to_global_batch(batch, trainer.mesh)
    # One real update first, so the gradients are compared away from the initialization.
    state, _ = trainer.train_step(state, gbatch)
    (loss, metrics), grads = trainer.loss_and_grads(state, gbatch)
    return trainer, jax.device_get(metrics), [np.asarray(x) for x in jax.tree.leaves(grads)]


@pytest.fixture(scope="module")
def one_device():
    """The single-device reference, computed once for every mesh below."""
    cfg = load_config(ROOT / "configs" / "fsdd_slu.py", "tiny")
    _, m1, p1 = _run(dataclasses.replace(cfg, mesh=MeshConfig()), jax.devices()[:1], _batch())
    return cfg, m1, p1


@pytest.mark.parametrize("mesh", [MeshConfig(data=-1, fsdp=2, tensor=1),
                                  MeshConfig(data=2, fsdp=2, tensor=2)])
def test_one_device_and_eight_devices_agree(one_device, mesh):
    assert jax.device_count() == 8, "tests/conftest.py must set 8 simulated CPU devices"
    cfg, m1, p1 = one_device
    trainer8, m8, p8 = _run(dataclasses.replace(cfg, mesh=mesh), jax.devices(), _batch())
    assert dict(trainer8.mesh.shape) == {"data": 8 // (mesh.fsdp * mesh.tensor),
                                         "fsdp": mesh.fsdp, "tensor": mesh.tensor}
    # Some parameters really are split across devices on the 8-device mesh.
    sharded = [s for s in jax.tree.leaves(trainer8.state_shardings.params)
               if any(a is not None for a in s.spec)]
    assert sharded
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], rtol=2e-5, atol=1e-6, err_msg=k)
    scale = max(float(np.abs(g).max()) for g in p1)
    for a, b in zip(p1, p8):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale)


def _nlu_batch(B=8, L=16, V=40, intents=6, domains=3, tags=5, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, L + 1, B).astype(np.int32)
    tokens = rng.integers(1, V, (B, L)).astype(np.int32)
    pad = np.arange(L)[None] >= lengths[:, None]
    tokens[pad] = 0
    weight = np.ones(B, np.float32)
    weight[-1] = 0
    return {"tokens": tokens, "token_lengths": lengths,
            "intent": rng.integers(0, intents, B).astype(np.int32),
            "domain": rng.integers(0, domains, B).astype(np.int32),
            "slot_tags": np.where(pad, -1, rng.integers(0, tags, (B, L))).astype(np.int32),
            "index": np.arange(B, dtype=np.int32), "weight": weight}


@pytest.mark.parametrize("mesh", [MeshConfig(data=-1, fsdp=2, tensor=1),
                                  MeshConfig(data=2, fsdp=2, tensor=2)])
def test_nlu_step_one_device_and_eight_devices_agree(mesh):
    cfg = load_config(ROOT / "configs" / "slurp_nlu.py", "tiny",
                      ["model.encoder.dropout=0.0", "model.head_dropout=0.0"])
    kwargs = {"vocab_size": 40, "num_intents": 6, "num_domains": 3, "num_slot_tags": 5}
    runs = []
    for m, devices in ((MeshConfig(), jax.devices()[:1]), (mesh, jax.devices())):
        trainer = make_trainer(dataclasses.replace(cfg, mesh=m), kwargs, devices)
        state = trainer.init_state()
        gbatch = mesh_lib.to_global_batch(_nlu_batch(), trainer.mesh)
        state, _ = trainer.train_step(state, gbatch)
        (_, metrics), grads = trainer.loss_and_grads(state, gbatch)
        runs.append((jax.device_get(metrics), [np.asarray(x) for x in jax.tree.leaves(grads)]))
    (m1, g1), (m8, g8) = runs
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], rtol=2e-5, atol=1e-6, err_msg=k)
    scale = max(float(np.abs(g).max()) for g in g1)
    for a, b in zip(g1, g8):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale)
