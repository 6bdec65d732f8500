"""TFDS builder `jaxslu_fsdd` for the bundled Free Spoken Digit Dataset (no network access)."""
from jaxslu.data.tfds_fsdd.builder import JaxsluFsdd, JaxsluFsddConfig, prepare_fsdd_tfds

__all__ = ["JaxsluFsdd", "JaxsluFsddConfig", "prepare_fsdd_tfds"]
