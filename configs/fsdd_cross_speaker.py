"""Cross-speaker FSDD: train on four speakers, test on the fifth (default: george).

    jaxslu train --config configs/fsdd_cross_speaker.py --workdir runs/fsdd_xspk --eval
    --set data.options.holdout_speaker=nicolas   to hold out another speaker.
"""
import dataclasses
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("fsdd_slu", Path(__file__).with_name("fsdd_slu.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(variant: str = "default"):
    cfg = _base.get_config(variant)
    return dataclasses.replace(
        cfg, name="fsdd_cross_speaker",
        data=dataclasses.replace(cfg.data, options={"holdout_speaker": "george"}))
