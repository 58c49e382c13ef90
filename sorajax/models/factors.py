"""Shape rules shared by the VAE and the DiT, with errors that name the nearest valid size.

Every check here runs in Python on static shapes, so a bad shape fails at trace time with one line
instead of an XLA shape error deep inside a convolution.
"""


def nearest_valid(value: int, step: int, offset: int = 0, minimum: int | None = None) -> list[int]:
  """The valid sizes (offset + step*k) on either side of `value`, smallest first.

  `minimum` drops candidates below the smallest size that makes sense (e.g. one frame).
  """
  lower = offset + ((value - offset) // step) * step
  candidates = [lower, lower + step]
  if minimum is not None:
    candidates = [c for c in candidates if c >= minimum] or [minimum]
  return candidates


def _describe(candidates: list[int]) -> str:
  return " or ".join(str(c) for c in candidates)


def check_multiple(name: str, value: int, step: int, what: str = "") -> None:
  """Raise a one-line ValueError unless `value` is a positive multiple of `step`."""
  if value >= step and value % step == 0:
    return
  label = f"{what} {name}" if what else name
  near = _describe(nearest_valid(value, step, minimum=step))
  raise ValueError(f"{label}={value} is not a multiple of {step}; nearest valid: {near}")


def check_frames(frames: int, temporal_factor: int, temporal_patch: int = 1) -> None:
  """Frame counts are 1 + f*k: the first frame is encoded alone (so an image is one frame).

  With a temporal patch p over the 1 + k latent frames, 1 + k must also be a multiple of p.
  """
  f, p = temporal_factor, temporal_patch
  first = 1 + f * (p - 1)  # the fewest frames whose latents fill one patch
  if frames >= first and (frames - first) % (f * p) == 0:
    return
  near = _describe(nearest_valid(frames, f * p, offset=first, minimum=first))
  rule = f"1 + {f}*k" if p == 1 else f"1 + {f}*k with 1 + k a multiple of {p}"
  raise ValueError(f"frames={frames} is not {rule}; nearest valid: {near}")


def check_continuation(frames: int, temporal_factor: int) -> None:
  """A chunk that continues a clip (chunked coding) holds f*k frames, k >= 1."""
  if frames >= temporal_factor and frames % temporal_factor == 0:
    return
  near = _describe(nearest_valid(frames, temporal_factor, minimum=temporal_factor))
  raise ValueError(f"continuing chunk of {frames} frames is not {temporal_factor}*k; "
                   f"nearest valid: {near}")


def check_video_shape(
  frames: int, height: int, width: int, temporal_factor: int, spatial_factor: int,
  temporal_patch: int = 1,
) -> None:
  """Raise a one-line ValueError naming the first bad dimension and the nearest valid values."""
  check_frames(frames, temporal_factor, temporal_patch)
  check_multiple("height", height, spatial_factor)
  check_multiple("width", width, spatial_factor)


def log2_exact(value: int, name: str) -> int:
  """log2 of a power of two, or a one-line ValueError naming the nearest powers."""
  if value >= 1 and value & (value - 1) == 0:
    return value.bit_length() - 1
  lower = 1 << (value.bit_length() - 1) if value >= 1 else 1
  raise ValueError(
    f"{name}={value} is not a power of 2; nearest valid: {_describe([lower, 2 * lower])}"
  )
