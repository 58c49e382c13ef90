"""Device mesh, logical-axis rules and the sharding helpers built on them.

Model code names axes logically ("embed", "activation_batch", ...); the config maps those names to
the four mesh axes below. This module is the only place that turns one into the other.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "context")
# Activations' batch dimension is split over every axis that holds different examples.
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Returns the size of each of MESH_AXES; one axis may be -1 to take the remaining devices."""
  unknown = sorted(set(shape) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh axis {unknown[0]!r} is unknown; valid axes: {', '.join(MESH_AXES)}")
  sizes = [int(shape.get(name, 1)) for name in MESH_AXES]
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1:
    raise ValueError("only one mesh axis may be -1 (fill with the remaining devices)")
  known = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"mesh axes {dict(zip(MESH_AXES, sizes))} do not divide "
                       f"{num_devices} devices")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but {num_devices} "
        "are present; set one axis to -1 to fill")
  return tuple(sizes)


# Logical axis name -> mesh axes. Configs start from these and may override them.
DEFAULT_LOGICAL_RULES = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", "context"),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_embed", None),
    ("activation_kv", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("norm", None),
    ("layers", None),  # the stacked-blocks axis of scanned parameters
)


def _slices(devices: Sequence[jax.Device]) -> int:
  return len({getattr(d, "slice_index", 0) for d in devices})


def _granules(devices: Sequence[jax.Device]) -> int:
  """Slices (TPU multislice) or, within one slice, processes: the units DCN connects."""
  return _slices(devices) if _slices(devices) > 1 else len({d.process_index for d in devices})


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None,
              dcn_shape: Mapping[str, int] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor, context) mesh from the config's `mesh` block.

  `dcn_shape` (the config's `dcn_mesh`) splits axes across slices, or across processes where
  devices have no slices: `shape` is then the mesh within one slice (ICI), and each axis's size
  in the result is its ICI size times its DCN size. Put data (or fsdp) on DCN: its collectives
  are the rarest and most tolerant of the slower links.
  """
  devices = list(devices) if devices is not None else jax.devices()
  # Auto axes: XLA propagates shardings from the constraints the model and the step give it.
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  dcn_shape = dict((dcn_shape or {}).items())
  if any(int(size) != 1 for size in dcn_shape.values()):
    granules = _granules(devices)
    try:
      dcn = resolve_mesh_shape(dcn_shape, granules)
    except ValueError as e:
      raise ValueError(f"dcn_mesh: {e} (over {granules} slices, "
                       "or processes without slices)") from e
    ici = resolve_mesh_shape(shape, len(devices) // granules)
    grid = mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, process_is_granule=_slices(devices) == 1)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)
  sizes = resolve_mesh_shape(shape, len(devices))
  if devices == jax.devices():
    return jax.make_mesh(sizes, MESH_AXES, axis_types=axis_types, devices=devices)
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=axis_types)


def logical_rules(
  rules: Sequence[Sequence]
) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """Config stores rules as lists (ml_collections/JSON friendly); flax wants tuples."""
  out = []
  for name, target in rules:
    if isinstance(target, list):
      target = tuple(target)
    out.append((name, target))
  return tuple(out)


def mesh_axes(logical_name: str) -> tuple[str, ...]:
  """The mesh axes a logical axis name maps to under the current `nn.logical_axis_rules`."""
  spec = nn.logical_to_mesh_axes((logical_name,))[0]
  if spec is None:
    return ()
  return (spec,) if isinstance(spec, str) else tuple(spec)


def per_device(fn, mesh, q, k, v, mask, tokens_axis: str | None = None):
  """Runs attention `fn(q, k, v, mask)` on each device's examples and heads (shard_map): for
  kernels XLA cannot partition itself (Pallas), and, with `tokens_axis`, on each device's share
  of the tokens too (context parallelism, where `fn` exchanges them over that axis).
  q, k, v are (B, L, heads, d), mask None or (B, 1, 1, Lk). Axes that do not divide the batch or
  heads are left whole."""
  batch = mesh_axes("activation_batch")
  heads = mesh_axes("activation_heads")
  if q.shape[0] % math.prod(mesh.shape[a] for a in batch):
    batch = ()  # e.g. one sample on a data-parallel mesh: every batch shard computes it
  if q.shape[2] % math.prod(mesh.shape[a] for a in heads):
    heads = ()
  tokens = PartitionSpec(batch or None, tokens_axis, heads or None, None)
  if mask is None:
    return jax.shard_map(lambda q, k, v: fn(q, k, v, None), mesh=mesh, in_specs=(tokens,) * 3,
                         out_specs=tokens, check_vma=False)(q, k, v)
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), (q.shape[0], 1, 1, k.shape[1]))
  keys = PartitionSpec(batch or None, None, None, tokens_axis)
  return jax.shard_map(fn, mesh=mesh, in_specs=(tokens,) * 3 + (keys,), out_specs=tokens,
                       check_vma=False)(q, k, v, mask)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide, so tiny or odd-sized tensors replicate."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = []
    for axis in axes:
      if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
        kept.append(axis)
    fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return PartitionSpec(*fitted)


def strip_boxes(tree):
  """Unboxes `nn.Partitioned` leaves without the sharding constraint `nn.meta.unbox` may add
  (which fails on abstract values under a mesh)."""
  is_box = lambda x: isinstance(x, nn.meta.Partitioned)  # noqa: E731
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def _spread(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, axis: str) -> PartitionSpec:
  """`spec` with `axis` added to the largest dimension it then still divides, if `spec` does not
  use it yet: so leaves whose logical axes miss it (biases, norm scales) are split too."""
  dims = list(tuple(spec) + (None,) * (len(shape) - len(spec)))
  used = [a for d in dims if d is not None for a in ((d,) if isinstance(d, str) else d)]
  if axis in used or mesh.shape[axis] == 1:
    return spec
  for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
    current = () if dims[i] is None else ((dims[i],) if isinstance(dims[i], str) else dims[i])
    if shape[i] % (math.prod(mesh.shape[a] for a in current) * mesh.shape[axis]) == 0:
      dims[i] = current + (axis,) if current else axis
      return PartitionSpec(*dims)
  return spec


def logical_shardings(abstract_tree, mesh: Mesh, rules, spread_over: str | None = None) -> object:
  """NamedShardings for a tree of (possibly `nn.Partitioned`-boxed) abstract arrays.

  The result has the structure of the unboxed tree. Leaves without logical names replicate;
  with `spread_over` (e.g. "fsdp"), every leaf that does not use that mesh axis yet is split over
  it along a dimension it divides (ZeRO-3 for the leaves the rules leave whole).
  """
  specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  values = strip_boxes(abstract_tree)

  def to_sharding(value, spec):
    spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec()
    fitted = _fit_spec(spec, value.shape, mesh)
    if fitted != spec:
      logging.debug("replicating dims of %s %s not divisible by %s", value.shape, spec, mesh.shape)
    if spread_over is not None:
      fitted = _spread(fitted, value.shape, mesh, spread_over)
    return NamedSharding(mesh, fitted)

  return jax.tree.map(lambda spec, value: to_sharding(value, spec), mesh_specs, values,
                      is_leaf=lambda x: x is None or isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch-major arrays: dimension 0 over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)
