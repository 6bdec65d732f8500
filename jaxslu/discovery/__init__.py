"""The intent-discovery family (ADVIN): open classification of known intents, an embedding
trained with a pairwise margin loss, threshold-based clustering that finds how many new intents
(and domains) there are. `jaxslu discover` runs it on any text<TAB>label TSV; the pieces:

  data.py      TSV reading, the known/labeled protocol split, the grouped training source
  features.py  cached token states of a frozen pretrained encoder's bottom layers
  models.py    the discovery encoder (registered "discovery_encoder")
  losses.py    the `pairwise_margin` loss term
  task.py      the `intent_discovery` task (core trainer)
  cluster.py   linkage, threshold calibration, NMI/ARI/ACC and open-classification metrics
  pipeline.py  the three stages end to end
Importing this package registers the task, model, loss term and data source.
"""
from jaxslu.discovery import data as _data  # noqa: F401  (registers intent_groups)
from jaxslu.discovery import losses as _losses  # noqa: F401  (registers pairwise_margin)
from jaxslu.discovery import models as _models  # noqa: F401  (registers discovery_encoder)
from jaxslu.discovery import task as _task  # noqa: F401  (registers intent_discovery)
