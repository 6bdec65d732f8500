"""Loss-term composition from a config line."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslu.losses import build_objective, parse_objective


def test_parse_objective():
    assert parse_objective("rnnt + 0.3*intent_ce + 5e-2 * ctc") == [
        (1.0, "rnnt"), (0.3, "intent_ce"), (0.05, "ctc")]
    with pytest.raises(ValueError, match="cannot parse"):
        parse_objective("rnnt + 0.3**x")
    with pytest.raises(ValueError, match="twice"):
        parse_objective("rnnt + rnnt")


def test_unknown_term_and_option_errors():
    with pytest.raises(KeyError, match="unknown loss 'nope'"):
        build_objective("nope")
    with pytest.raises(ValueError, match="unknown option"):
        build_objective("intent_ce", {"intent_ce": {"bogus": 1}})
    with pytest.raises(ValueError, match="not in the objective"):
        build_objective("intent_ce", {"rnnt": {}})


def test_weighted_sum_and_per_term_logging():
    rng = np.random.default_rng(0)
    B, U, K, C = 4, 5, 3, 6
    batch = {"intent": jnp.array([0, 2, -1, 5]), "weight": jnp.array([1, 1, 1, 0], jnp.float32),
             "slot_tags": jnp.array(rng.integers(-1, K, (B, U)))}
    outputs = {"intent_logits": jnp.array(rng.normal(size=(B, C)), jnp.float32),
               "slot_logits": jnp.array(rng.normal(size=(B, U, K)), jnp.float32)}
    obj = build_objective("0.5*intent_ce + 2*slot_ce")
    total, metrics = obj(batch, outputs, None)
    # independent computation with numpy
    lp = outputs["intent_logits"] - np.log(np.exp(outputs["intent_logits"]).sum(-1, keepdims=True))
    ic = np.mean([-lp[0, 0], -lp[1, 2]])  # row 2 has no intent, row 3 is padding
    slp = np.asarray(outputs["slot_logits"])
    slp = slp - np.log(np.exp(slp).sum(-1, keepdims=True))
    tags = np.asarray(batch["slot_tags"])
    vals = [-slp[b, u, tags[b, u]] for b in range(3) for u in range(U) if tags[b, u] >= 0]
    sc = np.mean(vals)
    np.testing.assert_allclose(metrics["loss/intent_ce"], ic, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss/slot_ce"], sc, rtol=1e-5)
    np.testing.assert_allclose(total, 0.5 * ic + 2 * sc, rtol=1e-5)
    assert "intent_ce/accuracy" in metrics and "slot_ce/tag_accuracy" in metrics
