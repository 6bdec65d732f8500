"""Recommendation: (contrastive) KGAT over a collaborative knowledge graph, and BPR-MF.

Importing this package registers the `kgat` task, the `kgat` and `bpr_mf` models, the `bpr`,
`transr` and `graph_infonce` loss terms, the `movielens_kg` and `recipe_graph` data sets and the
`recommendation` evaluator (see docs/recommendation.md)."""
from jaxslu.recommendation import data as _data  # noqa: F401  (movielens_kg, recipe_graph)
from jaxslu.recommendation import losses as _losses  # noqa: F401  (bpr, transr, graph_infonce)
from jaxslu.recommendation import models as _models  # noqa: F401  (kgat, bpr_mf)
from jaxslu.recommendation import task as _task  # noqa: F401  (the kgat task)
from jaxslu.recommendation import evaluate as _evaluate  # noqa: F401  (recommendation)
from jaxslu.recommendation.models import BprMfConfig, KgatConfig

__all__ = ["BprMfConfig", "KgatConfig"]
