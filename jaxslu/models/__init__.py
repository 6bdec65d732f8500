"""Models; importing this package registers them in `jaxslu.registry.MODELS`."""
from jaxslu.models import transducer  # noqa: F401  (registers "transducer")
from jaxslu.models import streaming  # noqa: F401  (registers "streaming_transducer")
from jaxslu.models.transducer import (EncoderConfig, PredictorConfig, Transducer,
                                      TransducerConfig)

__all__ = ["EncoderConfig", "PredictorConfig", "Transducer", "TransducerConfig"]
