"""Device mesh, logical-axis rules and shardings.

The mesh has three named axes: `data` (pure data parallelism), `fsdp` (data parallelism with
parameters and optimizer state sharded over it) and `tensor` (model parallelism inside layers).
Axis types are set explicitly to `Auto`: the train step states the shardings of its inputs and
outputs, and XLA's partitioner propagates them through the model.

Parameters name their dimensions with logical axes (`logical_axes` metadata on each nnx.Variable);
`MeshConfig.rules` maps logical names to mesh axes. A dimension whose size the mesh axis does not
divide stays replicated (so tiny test models shard cleanly on any mesh), and a mesh axis is used at
most once per parameter.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxslu.config import MeshConfig

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def initialize_distributed(cfg: MeshConfig) -> None:
    """Multi-host set-up: `jax.distributed.initialize` when the config asks for it.

    Idempotent: a process joins the distributed system once, and later calls (evaluation after
    training in the same process, a second run) keep it as it is. Their config may come from the
    workdir's config.json, written by process 0, so its `process_id` is not this process's own
    and is not used again."""
    if not cfg.distributed:
        return
    if jax.distributed.is_initialized():
        log.debug("distributed: already initialized (process %d of %d)", jax.process_index(),
                  jax.process_count())
        return
    if cfg.num_processes and not -1 <= cfg.process_id < cfg.num_processes:
        raise ValueError(f"mesh.process_id={cfg.process_id} is not in [0, "
                         f"mesh.num_processes={cfg.num_processes})")
    kwargs: dict[str, Any] = {}
    if cfg.coordinator_address:
        kwargs["coordinator_address"] = cfg.coordinator_address
    if cfg.num_processes:
        kwargs["num_processes"] = cfg.num_processes
    if cfg.process_id >= 0:
        kwargs["process_id"] = cfg.process_id
    jax.distributed.initialize(**kwargs)
    log.info("distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"mesh config {sizes}: at most one axis may be -1 (the rest of the devices)")
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh config data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}: "
                         "sizes must be positive or -1")
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not divide into a mesh with fixed axes "
                             f"of total size {known}; change mesh.fsdp / mesh.tensor")
        sizes = [num_devices // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"mesh data*fsdp*tensor = {sizes} needs {int(np.prod(sizes))} devices, "
                         f"but {num_devices} are available; set mesh.data=-1 to use all of them")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(cfg, len(devices))
    try:
        dev_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # non-physical topologies (CPU simulation, odd counts): plain reshape
        dev_array = np.asarray(devices).reshape(shape)
    return Mesh(dev_array, MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, str | None] | Sequence[tuple[str, str | None]]) -> P:
    """PartitionSpec for one array from its logical axis names."""
    if not logical_axes:
        return P()
    rules = dict(rules)
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, size in zip(logical_axes, shape):
        axis = rules.get(name) if name is not None else None
        if axis is None or axis in used or size % mesh.shape[axis] != 0 or mesh.shape[axis] == 1:
            spec.append(None)
        else:
            spec.append(axis)
            used.add(axis)
    return P(*spec)


def _var_logical_axes(var: nnx.Variable) -> tuple | None:
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    return meta.get("logical_axes")


def state_shardings(state: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings for an nnx.State (or any pytree of Variables/arrays) from logical axes."""

    def one(x):
        if isinstance(x, nnx.Variable):
            value = x.get_value() if hasattr(x, "get_value") else x.value
            spec = logical_to_spec(_var_logical_axes(x), np.shape(value), mesh, rules)
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def batch_leaf_shardings(local_batch: Any, mesh: Mesh,
                         partition: Mapping[str, str] | None = None) -> Any:
    """A NamedSharding for every leaf of a (nested) batch: split on the leading dimension over
    the data-parallel axes, or replicated where `partition` says so ({"a/b": "replicated"}, by
    leaf path) and for 0-d leaves."""
    partition = dict(partition or {})
    bad = {k: v for k, v in partition.items() if v not in ("batch", "replicated")}
    if bad:
        raise ValueError(f"batch partition {bad}: each leaf is 'batch' or 'replicated'")
    split, repl = batch_sharding(mesh), replicated(mesh)

    def one(path, leaf):
        name = "/".join(str(getattr(e, "key", getattr(e, "idx", e))) for e in path)
        if partition.get(name) == "replicated" or np.ndim(leaf) == 0:
            return repl
        return split

    return jax.tree_util.tree_map_with_path(one, local_batch)


def to_global_batch(local_batch: Any, mesh: Mesh,
                    partition: Mapping[str, str] | None = None) -> Any:
    """Assemble this process's slice of the global batch into global jax.Arrays.

    Works on any nested dict/list of arrays (pairs, histories, graphs). Split leaves: each
    process holds its rows, the global leading dim is the sum over processes. Replicated
    leaves: every process passes the same full array.
    """
    shardings = batch_leaf_shardings(local_batch, mesh, partition)
    dp = data_parallel_size(mesh) // max(1, jax.process_count())

    def one(path, leaf, sharding):
        arr = np.asarray(leaf)
        if sharding.spec != P() and arr.shape[0] % max(1, dp):
            name = "/".join(str(getattr(e, "key", getattr(e, "idx", e))) for e in path)
            raise ValueError(f"batch leaf {name!r} has {arr.shape[0]} rows on this process, not "
                             f"divisible by its {dp} data-parallel devices; make the batch size a "
                             "multiple of the data-parallel size")
        return jax.make_array_from_process_local_data(sharding, arr)

    return jax.tree_util.tree_map_with_path(one, local_batch, shardings)


def common_local_shapes(local_batch: Any, pad_values: Mapping[str, Any] | None = None) -> Any:
    """Pad every process's local batch to the same shape per leaf (the largest across processes).

    Each process pads its own rows to a bucket, so two processes can pick different lengths for
    the same global step, and a global array needs one shape. Buckets grow with the longest row,
    so the largest local bucket is the one the whole global batch gets on a single process.
    Trailing padding is `pad_values[leaf path]` ("a/b", from the task's `pad_values()`)."""
    if jax.process_count() == 1:
        return local_batch
    from jax.experimental import multihost_utils

    pad_values = dict(pad_values or {})
    flat, treedef = jax.tree_util.tree_flatten_with_path(local_batch)
    dims = [np.shape(leaf)[1:] for _, leaf in flat]
    mine = np.asarray([d for ds in dims for d in ds], np.int32)
    if mine.size == 0:
        return local_batch
    target = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, mine.size).max(0)
    out, i = [], 0
    for (path, leaf), ds in zip(flat, dims):
        want = tuple(int(x) for x in target[i:i + len(ds)])
        i += len(ds)
        if want != tuple(ds):
            name = "/".join(str(getattr(e, "key", getattr(e, "idx", e))) for e in path)
            if name not in pad_values:
                raise ValueError(f"batch leaf {name!r} is {tuple(ds)} per row on this process but "
                                 f"{want} on another; the task's pad_values() must give the value "
                                 "its collate pads that leaf with")
            leaf = np.pad(np.asarray(leaf), [(0, 0)] + [(0, w - d) for w, d in zip(want, ds)],
                          constant_values=pad_values[name])
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)
