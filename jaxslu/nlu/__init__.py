"""The text NLU family: text encoders (from scratch and BERT-family checkpoints), the joint
domain / intent / slot task with open (in-scope vs out-of-scope) classification, its loss
terms, data sources and evaluator. Importing this package registers them."""
from jaxslu.nlu import data as _data  # noqa: F401  (registers hwu64, slurp_nlu, textoir)
from jaxslu.nlu import losses as _losses  # noqa: F401  (registers domain_ce)
from jaxslu.nlu import models as _models  # noqa: F401  (registers joint_nlu)
from jaxslu.nlu import task as _task  # noqa: F401  (registers the nlu task)
from jaxslu.nlu import evaluate as _evaluate  # noqa: F401  (registers the nlu evaluator)
from jaxslu.nlu.models import JointNLU, NluConfig, TextEncoderConfig

__all__ = ["JointNLU", "NluConfig", "TextEncoderConfig"]
