"""Data: sources (registered in jaxslu.registry.DATASETS), label vocabularies, the grain pipeline.

Importing this package registers every dataset; `jaxslu.registry.DATASETS` imports it lazily the
first time a dataset name is looked up. The TFDS adapter is registered here too, but TensorFlow
Datasets itself is only imported when a "tfds" source is built.
"""
from jaxslu.data import sources, tfds_adapter  # noqa: F401  (register datasets)
from jaxslu.data.labels import Vocabularies
from jaxslu.data.pipeline import DataError, make_batches
from jaxslu.data.sources import ExampleReadError

__all__ = ["DataError", "ExampleReadError", "Vocabularies", "make_batches", "sources"]
