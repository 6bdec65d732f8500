"""Typed configs: overrides, errors on unknown keys, JSON round trip."""
import dataclasses

import pytest

from jaxslu.config import (ConfigError, DataConfig, ExperimentConfig, OptimConfig, apply_overrides,
                           from_dict, to_dict)


@dataclasses.dataclass(frozen=True)
class _Enc:
    num_layers: int = 2
    causal: bool = False
    kind: str = "lstm"


@dataclasses.dataclass(frozen=True)
class _Model:
    name: str = "m"
    encoder: _Enc = _Enc()
    dropout: float = 0.1


def _cfg():
    return ExperimentConfig(name="t", model=_Model())


def test_override_nested_typed_fields():
    cfg = apply_overrides(_cfg(), ["model.encoder.num_layers=4", "model.encoder.causal=true",
                                   "optim.learning_rate=3e-4", "data.bucket_seconds=(1.0, 2.0)",
                                   "loss=rnnt + 0.3*intent_ce"])
    assert cfg.model.encoder.num_layers == 4 and isinstance(cfg.model.encoder.num_layers, int)
    assert cfg.model.encoder.causal is True
    assert cfg.optim.learning_rate == 3e-4
    assert cfg.data.bucket_seconds == (1.0, 2.0)
    assert cfg.loss == "rnnt + 0.3*intent_ce"


def test_override_dict_fields_accept_new_keys():
    cfg = apply_overrides(_cfg(), ["loss_options.rnnt.implementation=xla",
                                   "loss_options.rnnt.fastemit_lambda=0.01",
                                   "data.options.holdout_speaker=george"])
    assert cfg.loss_options == {"rnnt": {"implementation": "xla", "fastemit_lambda": 0.01}}
    assert cfg.data.options == {"holdout_speaker": "george"}


@pytest.mark.parametrize("bad,match", [
    ("model.encoder.num_layer=4", "unknown config key 'num_layer'.*valid keys"),
    ("optim.learning_rate=fast", "cannot parse 'fast'"),
    ("model.encoder.causal=maybe", "cannot parse 'maybe'"),
    ("nokey", "not of the form key=value"),
    ("model.encoder=3", "config section"),
])
def test_override_errors_are_clear(bad, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(_cfg(), [bad])


def test_json_round_trip_restores_types():
    cfg = apply_overrides(_cfg(), ["loss_options.rnnt.fused=true"])
    back = from_dict(to_dict(cfg))
    assert back == cfg
    assert isinstance(back.data, DataConfig) and isinstance(back.optim, OptimConfig)
    assert isinstance(back.data.bucket_seconds, tuple)


def test_all_shipped_configs_load():
    from pathlib import Path
    from jaxslu.config import load_config
    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.py"))
    assert files
    for f in files:
        cfg = load_config(f)
        assert isinstance(cfg, ExperimentConfig), f
        assert from_dict(to_dict(cfg)) == cfg, f
