"""The speech family: the audio transducer / end-to-end SLU task, its batching, evaluator and
transcription. Models live in `jaxslu.models` (transducers, streaming) and decoding in
`jaxslu.decoding`; importing this package registers the task and the evaluator."""
from jaxslu.slu import task as _task  # noqa: F401  (registers "transducer_slu")
from jaxslu.slu import evaluate as _evaluate  # noqa: F401  (registers the evaluator)
from jaxslu.slu.batching import make_audio_batches
from jaxslu.slu.evaluate import Transcriber
from jaxslu.slu.task import RunAssets, TransducerSLUTask, transducer_model_kwargs

__all__ = ["RunAssets", "Transcriber", "TransducerSLUTask", "make_audio_batches",
           "transducer_model_kwargs"]
