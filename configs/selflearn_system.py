"""The simulated assistant's NLU model (the "system" of the self-learning simulator).

A joint domain / intent / slot Transformer (the slurp_nlu default) trained only on the
`system_train` part of the request pool (60% of HWU64 train), so about half of the simulated
requests are phrasings it has never seen and its mistakes are real model errors.

    jaxslu train --config configs/selflearn_system.py --workdir runs/selflearn_system --eval
    jaxslu selflearn simulate --system runs/selflearn_system --out runs/selflearn/log

get_config("tiny"): seconds, for tests.
"""
import dataclasses

import importlib.util as _ilu
from pathlib import Path as _Path

from jaxslu.config import TrainConfig

_spec = _ilu.spec_from_file_location("_slurp_nlu_cfg", _Path(__file__).with_name("slurp_nlu.py"))
_base = _ilu.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(variant: str = "default"):
    base = _base.get_config("tiny" if variant == "tiny" else "default")
    cfg = dataclasses.replace(
        base, name=f"selflearn_system{'_tiny' if variant == 'tiny' else ''}",
        data=dataclasses.replace(base.data, dataset="selflearn_requests",
                                 train_split="system_train", eval_splits=("unseen",)),
        train=(base.train if variant == "tiny"
               else TrainConfig(steps=2000, log_every=100, checkpoint_every=500)))
    if variant not in ("default", "tiny"):
        raise ValueError(f"unknown variant {variant!r} of selflearn_system: 'default' or 'tiny'")
    return cfg
