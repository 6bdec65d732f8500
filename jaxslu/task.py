"""Tasks: where a task family meets the task-agnostic core (train/, parallel/, data/pipeline).

A task owns everything about its data and its model's interface that the training code must not
know:

  * assets: what a run builds from its training data and keeps in the workdir (tokenizer, label
    vocabularies, ...), and the model sizes derived from them (`model_kwargs`);
  * featurization and collation: `prepare_fn(source, assets, train, model)` turns a source
    index into a row, `collate(rows, batch_size)` pads rows into a batch (audio buckets, text,
    pairs, histories, graphs: any nested dict of arrays), `batch_partition` says which leaves are
    not split over the batch axes;
  * data checks (`check`: e.g. the transducer's joint activation, label capacity);
  * initial parameters (`init_params`: pretrained encoders) and frozen constants a loss term
    reads (`constants`: EWC anchors and Fisher weights, a frozen teacher), checkpointed with the
    run;
  * its default evaluator (a name in `jaxslu.registry.EVALUATORS`).

Register a task with `@TASKS.register("name")` on a `Task` subclass; a config selects it with
`task="name"` (and `task_options={...}`). The train loop calls only the methods below.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from jaxslu.config import ExperimentConfig
from jaxslu.registry import DATASETS, TASKS


class Task:
    """Base class of a task; subclasses override what their family needs."""

    #: evaluator used when `eval.evaluator` is empty
    default_evaluator: str = ""
    #: files in a workdir that hold the assets (copied by a warm start, checked by evaluation)
    asset_files: tuple[str, ...] = ()

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.options = dict(cfg.task_options)

    # -- data -------------------------------------------------------------------------------

    def open_source(self, split: str):
        """The data source of `split` (registered in DATASETS, options from `data.options`)."""
        return DATASETS.get(self.cfg.data.dataset).factory(split, **dict(self.cfg.data.options))

    # -- assets -----------------------------------------------------------------------------

    def load_assets(self, workdir: Path) -> Any | None:
        """The run's assets from `workdir`, or None when they are not there yet."""
        return None

    def build_assets(self, source, scratch: Path) -> Any:
        """Build the assets from the training source, deterministically (every process of a
        multi-host run builds the same). `scratch` is a process-private folder."""
        return None

    def save_assets(self, assets: Any, workdir: Path) -> None:
        """Write the assets into `workdir` atomically (called on process 0 only)."""

    def model_kwargs(self, assets: Any) -> dict[str, Any]:
        """Constructor arguments of the model besides its config and `rngs`."""
        return {}

    # -- batches ----------------------------------------------------------------------------

    def prepare_fn(self, source, assets: Any, *, train: bool, model: Any = None,
                   objective: Any = None) -> Callable[[int], Any]:
        """index -> row (or `jaxslu.data.pipeline.Skipped`). `model` (abstract, shapes only) and
        `objective` are given for training, for checks such as label capacity."""
        raise NotImplementedError(f"task {type(self).__name__} does not define prepare_fn")

    def collate(self, rows: Sequence[dict[str, Any]], batch_size: int) -> dict[str, Any]:
        raise NotImplementedError(f"task {type(self).__name__} does not define collate")

    def pad_values(self) -> dict[str, Any]:
        """{leaf path ("a/b"): value} that `collate` pads each variable-length leaf with: a
        multi-host step pads every process's batch to one shape with it (the largest bucket)."""
        return {}

    def batch_partition(self) -> dict[str, str] | None:
        """{leaf path ("a/b"): "replicated"} for leaves that are not split over the batch axes
        (e.g. a graph's shared adjacency); None: every leaf is split on its leading dim."""
        return None

    # -- checks, parameters, constants -------------------------------------------------------

    def check(self, model: Any, objective: Any) -> None:
        """Raise a clear error when the config, model and objective do not fit together."""

    def init_params(self, params: Any, assets: Any) -> Any:
        """Parameters of a fresh run after initialization (e.g. a pretrained encoder loaded)."""
        return params

    def constants(self, params: Any, assets: Any) -> Any:
        """Frozen constants loss terms read as `outputs["constants"]` (not trained,
        checkpointed with the run); {} when the task has none."""
        return {}


def get_task(cfg: ExperimentConfig) -> Task:
    entry = TASKS.get(cfg.task)
    return entry.factory(cfg)
