"""Drop-in replacements for `jax.lax.conv_general_dilated` that train faster on CPU.

`conv_impl, options = conv.choose(name)`: `models.create(..., conv_impl=conv_impl)` hands
the convolution to every `flax.linen.Conv` of a model (`conv_general_dilated=`), so the
model code and its parameters stay the same; `jax.jit(step, compiler_options=options)`
adds the XLA options that go with it (CPU_COMPILER_OPTIONS). The implementations:
'chunked' (`chunked_conv_general_dilated`: the weight gradient summed over batch chunks),
'cpu' ('auto' on one CPU device: 'chunked' plus `paired_conv` for narrow stride-1
convolutions) and 'patch' ('auto' on one CPU device for images of at most 16×16:
`patch_conv.patch_conv`, also what populations use, so a member and its sequential run
compute the same arithmetic). Only the order of float additions changes.
"""
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from oracle_jax import errors, patch_conv

# Examples per weight-gradient chunk: 8 is fastest on 2 CPU cores for CIFAR ResNets
# (benchmarks/conv_ops.py). Each chunk is one more convolution in the compiled program,
# so larger batches use larger chunks, at most MAX_CHUNKS of them: 4 chunks of 16 or 32
# train as fast as 8 chunks and compile sooner (benchmarks/README.md, "What limits").
DEFAULT_CHUNK_SIZE = 8
MAX_CHUNKS = 4


def chunked_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                 rhs_dilation=None, dimension_numbers=None,
                                 feature_group_count=1, batch_group_count=1,
                                 precision=None, preferred_element_type=None, *,
                                 chunk_size=DEFAULT_CHUNK_SIZE, max_chunks=MAX_CHUNKS,
                                 pair_narrow=False):
  """`lax.conv_general_dilated`, with the kernel gradient summed over ceil(batch /
  chunk_size) chunks of the batch (at most `max_chunks`; sizes differ by at most one);
  with `pair_narrow`, narrow stride-1 convolutions (forward and input gradient) are
  computed as width-paired convolutions (`paired_conv`).

  Why: XLA's CPU backend computes a convolution's weight gradient as one convolution
  contracting over the whole batch (a fusion whose speed falls as that batch grows) and
  transposes both operands for it. Here the forward pass and the input gradient are
  exactly `lax`'s, and the weight gradient is a sum over batch chunks of that same
  weight-gradient convolution, each chunk of each operand read once into the layout the
  convolution reads. The chunks are strided slices of the global batch, so a batch
  sharded over devices needs no data movement; the chunk sums accumulate in float32.
  """
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  spatial = lhs.ndim - 2
  lhs_dilation = tuple(lhs_dilation or (1,) * spatial)
  rhs_dilation = tuple(rhs_dilation or (1,) * spatial)
  if isinstance(padding, str) and set(lhs_dilation) != {1}:  # lax's own error
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers)
  if isinstance(padding, str):  # as lax.conv_general_dilated resolves it
    kernel = np.take(rhs.shape, dn.rhs_spec[2:])
    window = [(k - 1) * d + 1 for k, d in zip(kernel, rhs_dilation)]
    padding = lax.padtype_to_pads(np.take(lhs.shape, dn.lhs_spec[2:]), window,
                                  window_strides, padding)
  params = dict(window_strides=tuple(window_strides),
                padding=tuple((int(lo), int(hi)) for lo, hi in padding),
                lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dn,
                feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                precision=precision, preferred_element_type=preferred_element_type)
  batch = lhs.shape[dn.lhs_spec[0]]
  num_chunks = min(max_chunks, -(-batch // chunk_size))
  # A same-size convolution pairs its forward pass, its input gradient or both.
  paired = pair_narrow and _is_same_size_nhwc(lhs.shape, rhs.shape, params)
  if feature_group_count != 1 or batch_group_count != 1 or (num_chunks < 2 and not paired):
    return lax.conv_general_dilated(lhs, rhs, **params)  # nothing to chunk or pair
  return _conv(lhs, rhs, tuple(sorted(params.items())), num_chunks, pair_narrow)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(lhs, rhs, params, num_chunks, pair_narrow):
  del num_chunks
  return _forward(lhs, rhs, dict(params), pair_narrow)


def _conv_fwd(lhs, rhs, params, num_chunks, pair_narrow):
  return _conv(lhs, rhs, params, num_chunks, pair_narrow), (lhs, rhs)


def _conv_bwd(params, num_chunks, pair_narrow, residuals, g):
  lhs, rhs = residuals
  p = dict(params)
  d_lhs = _input_gradient(g, lhs, rhs, p, pair_narrow)
  if num_chunks < 2:
    _, rhs_vjp = jax.vjp(lambda r: lax.conv_general_dilated(lhs, r, **p), rhs)
    return d_lhs, rhs_vjp(g)[0]
  return d_lhs, chunked_kernel_gradient(lhs, g, rhs.shape, rhs.dtype, p, num_chunks)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _forward(lhs, rhs, p, pair_narrow):
  pairs = pair_factor(lhs.shape, rhs.shape, p) if pair_narrow else 1
  if pairs > 1:
    return paired_conv(lhs, rhs, p, pairs)
  return lax.conv_general_dilated(lhs, rhs, **p)


def _input_gradient(g, lhs, rhs, p, pair_narrow):
  """d(sum(conv(lhs, rhs) * g))/d lhs. A stride-1 'same-size' convolution's input
  gradient is itself one (the kernel turned 180° with in/out channels swapped, the
  padding mirrored), so it can be paired too; otherwise lax's own."""
  if pair_narrow and _is_same_size_nhwc(lhs.shape, rhs.shape, p):
    kh, kw = rhs.shape[:2]
    (top, bottom), (left, right) = p['padding']
    turned = jnp.flip(rhs, (0, 1)).swapaxes(2, 3)
    mirrored = dict(p, padding=((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)))
    return _forward(g, turned, mirrored, pair_narrow).astype(lhs.dtype)
  _, lhs_vjp = jax.vjp(lambda l: lax.conv_general_dilated(l, rhs, **p), lhs)
  return lhs_vjp(g)[0]  # the input gradient exactly as lax computes it


NHWC_SPECS = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # flax.linen.Conv's NHWC/HWIO/NHWC


def _is_same_size_nhwc(lhs_shape, rhs_shape, p):
  """An NHWC 2-D convolution with stride 1, no dilation, no groups, whose output has the
  input's height and width (e.g. 3x3 with padding 1)."""
  dn = p['dimension_numbers']
  return (len(lhs_shape) == 4 and (dn.lhs_spec, dn.rhs_spec, dn.out_spec) == NHWC_SPECS
          and p['window_strides'] == (1, 1) and p['lhs_dilation'] == (1, 1)
          and p['rhs_dilation'] == (1, 1) and p['feature_group_count'] == 1
          and p['batch_group_count'] == 1
          and all(lo + hi == k - 1 for (lo, hi), k in zip(p['padding'], rhs_shape[:2])))


# Output channels a paired convolution aims for: XLA:CPU's convolutions reach 40-60 % of
# the GEMM speed they reach at 32+ channels when the output has 3 or 16 (benchmarks/).
PAIRED_CHANNELS = 32
MAX_PAIRS = 4


def pair_factor(lhs_shape, rhs_shape, p) -> int:
  """How many horizontally adjacent output pixels `paired_conv` merges (1 = none): the
  smallest power of two that gives >= PAIRED_CHANNELS output channels, at most MAX_PAIRS,
  dividing the width."""
  if not _is_same_size_nhwc(lhs_shape, rhs_shape, p):
    return 1
  pairs, c_out, width = 1, rhs_shape[3], lhs_shape[2]
  while pairs < MAX_PAIRS and pairs * c_out < PAIRED_CHANNELS and width % (2 * pairs) == 0:
    pairs *= 2
  return pairs


def paired_conv(lhs, rhs, p, pairs):
  """A same-size stride-1 NHWC convolution computed with `pairs` adjacent output pixels
  of a row as one pixel of `pairs`·C_out channels: a convolution of width kw + pairs - 1
  and stride `pairs` along the row, whose kernel holds the original kernel at `pairs`
  offsets (zeros elsewhere). Its output [N, H, W/pairs, pairs·C_out] *is* the NHWC
  result in memory (a free reshape). Each output is the same sum of the same products in
  the same order, plus exact zeros; the (pairs + kw - 1)/kw times more multiply-adds
  run at GEMM widths XLA:CPU handles much better for 16 and 3 channels (timings:
  benchmarks/README.md, "Narrow convolutions")."""
  kh, kw, c_in, c_out = rhs.shape
  shifted = [jnp.pad(rhs, ((0, 0), (d, pairs - 1 - d), (0, 0), (0, 0))) for d in range(pairs)]
  kernel = jnp.stack(shifted, axis=3).reshape(kh, kw + pairs - 1, c_in, pairs * c_out)
  y = lax.conv_general_dilated(lhs, kernel, **dict(p, window_strides=(1, pairs)))
  return y.reshape(*y.shape[:2], y.shape[2] * pairs, c_out)


def chunked_kernel_gradient(lhs, g, rhs_shape, rhs_dtype, p, num_chunks):
  """d(sum(conv(lhs, rhs) * g))/d rhs as a sum over `num_chunks` strided batch chunks.

  Each term is the weight-gradient convolution `jax.vjp` would emit (batch and feature
  roles of lhs and g swapped: contract over the batch, slide over the image), but on
  operands laid out as XLA:CPU's convolution reads them — lhs as [chunk, C_in, spatial...,
  batch/chunks], g as [chunk, spatial..., batch/chunks, C_out] — so each operand is
  transposed once for all chunks and chunk j is a contiguous slab.
  """
  dn = p['dimension_numbers']
  k = len(dn.lhs_spec) - 2
  lhs_c = _split_batch(lhs, dn.lhs_spec[0], num_chunks)  # batch axis -> (rows, chunk)
  g_c = _split_batch(g, dn.out_spec[0], num_chunks)
  shift = lambda ax, b: ax + (ax > b)  # axis index after inserting the chunk axis at b + 1
  lb, ob = dn.lhs_spec[0], dn.out_spec[0]
  lhs_t = jnp.transpose(lhs_c, [lb + 1, shift(dn.lhs_spec[1], lb)]
                        + [shift(a, lb) for a in dn.lhs_spec[2:]] + [lb])
  g_t = jnp.transpose(g_c, [ob + 1] + [shift(a, ob) for a in dn.out_spec[2:]]
                      + [ob, shift(dn.out_spec[1], ob)])
  in_sp = [lhs.shape[a] for a in dn.lhs_spec[2:]]
  win_sp = [rhs_shape[a] for a in dn.rhs_spec[2:]]
  out_sp = [g.shape[a] for a in dn.out_spec[2:]]
  padding = _vjp_rhs_padding(in_sp, win_sp, p['window_strides'], out_sp, p['padding'],
                             p['lhs_dilation'], p['rhs_dilation'])
  trans_dn = lax.ConvDimensionNumbers(
      lhs_spec=(0, k + 1) + tuple(range(1, k + 1)),   # [C_in, spatial..., batch]
      rhs_spec=(k + 1, k) + tuple(range(k)),          # [spatial..., batch, C_out]
      out_spec=(0, k + 1) + tuple(range(1, k + 1)))   # [C_in, window..., C_out]
  total = None
  for j in range(num_chunks):
    term = lax.conv_general_dilated(
        lhs_t[j], g_t[j], window_strides=p['rhs_dilation'], padding=padding,
        lhs_dilation=p['lhs_dilation'], rhs_dilation=p['window_strides'],
        dimension_numbers=trans_dn, precision=p['precision'],
        preferred_element_type=jnp.float32)
    total = term if total is None else total + term
  # [C_in, window..., C_out] -> the kernel's own layout
  order = {dn.rhs_spec[0]: k + 1, dn.rhs_spec[1]: 0}
  order.update({a: 1 + i for i, a in enumerate(dn.rhs_spec[2:])})
  return jnp.transpose(total, [order[a] for a in range(k + 2)]).astype(rhs_dtype)


def _split_batch(x, axis, num):
  """x with `axis` (size n) split into (ceil(n / num), num): chunk j along the new axis
  holds indices j, j + num, j + 2 num, ... (strided, so a batch sharded over devices in
  contiguous blocks stays local). A batch not divisible by `num` is zero-padded, which
  adds nothing to the gradient."""
  n = x.shape[axis]
  rows = -(-n // num)
  if rows * num != n:
    x = jnp.pad(x, [(0, rows * num - n if a == axis else 0) for a in range(x.ndim)])
  return x.reshape(x.shape[:axis] + (rows, num) + x.shape[axis + 1:])


def _vjp_rhs_padding(in_shape, window, strides, out_shape, padding, lhs_dilation,
                     rhs_dilation):
  """Padding of the weight-gradient convolution (jax's `_conv_general_vjp_rhs_padding`)."""
  dilate = lambda n, d: 0 if n == 0 else 1 + d * (n - 1)
  pads = []
  for i, (lo, _) in enumerate(padding):
    lhs_d = dilate(in_shape[i], lhs_dilation[i])
    rhs_d = dilate(window[i], rhs_dilation[i])
    out_d = dilate(out_shape[i], strides[i])
    pads.append((lo, (out_d - lhs_d) + (rhs_d - lo - 1)))
  return tuple(pads)


IMPLEMENTATIONS = {
    'default': None,  # flax.linen.Conv's own `lax.conv_general_dilated`
    'chunked': functools.partial(chunked_conv_general_dilated, pair_narrow=False),
    'cpu': functools.partial(chunked_conv_general_dilated, pair_narrow=True),
    'patch': patch_conv.patch_conv,  # takes no chunk size
}
CPU_TUNED = ('chunked', 'cpu', 'patch')  # the names that go with CPU_COMPILER_OPTIONS
# Images up to this many pixels (the 8×8 digits, not 32×32 CIFAR) train fastest on CPU with
# 'patch'; at CIFAR's size XLA's convolutions win (benchmarks/README.md).
PATCH_MAX_PIXELS = 16 * 16


def patch_sized(image_shape) -> bool:
  """Whether images of `image_shape` (H, W, …) are small enough for 'patch' on CPU."""
  return image_shape is not None and np.prod(image_shape[:2]) <= PATCH_MAX_PIXELS
CONV_IMPLS = ('auto',) + tuple(IMPLEMENTATIONS)  # what config.conv_impl may name

# XLA:CPU runs its YNNPACK convolution kernels on one thread, so a training step uses
# half of a 2-core CPU. Leaving convolutions out of the YNNPACK fusion types (dots and
# reductions stay in) gives them to XLA's multi-threaded Eigen kernels. LLVM's -O1
# instead of -O2 for the fused loops compiles sooner at the same speed: the step's time
# is in library convolutions, not in generated code. Measurements: benchmarks/README.md
# ("What limits the JAX step on this CPU"). Only CPU compilations read these options.
CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type':
        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE',
    'xla_backend_optimization_level': 1,
}


def resolve(name: str, backend: Optional[str] = None, device_count: Optional[int] = None,
            image_shape: Optional[tuple] = None) -> str:
  """'auto' on a single CPU device → 'patch' for images of at most PATCH_MAX_PIXELS
  pixels, else 'cpu'; 'default' elsewhere: GPU/TPU libraries compute whole-batch weight
  gradients and narrow convolutions well, and with several (simulated) CPU devices the
  per-device batches are already small and the devices already run in parallel (chunked
  is no faster there, benchmarks/README.md). Other names are returned checked."""
  if name not in CONV_IMPLS:
    raise errors.ConfigError(f'Unknown conv_impl {name!r}; choose one of: {", ".join(CONV_IMPLS)}.')
  if name == 'auto':
    backend = backend or jax.default_backend()
    device_count = jax.device_count() if device_count is None else device_count
    if backend != 'cpu' or device_count != 1:
      return 'default'
    return 'patch' if patch_sized(image_shape) else 'cpu'
  return name


def get(name: str, chunk_size: Optional[int] = None,
        device_count: Optional[int] = None) -> Optional[Callable]:
  """The convolution a config names, for `models.create(..., conv_impl=...)`:
  'default' → None (Flax's own `lax` call); 'chunked' → `chunked_conv_general_dilated`
  with `chunk_size` (default `DEFAULT_CHUNK_SIZE`); 'cpu' → the same with narrow
  convolutions paired (`paired_conv`); 'patch' → `patch_conv.patch_conv`; 'auto' → see
  `resolve`."""
  impl = IMPLEMENTATIONS[resolve(name, device_count=device_count)]
  if impl is None or impl is patch_conv.patch_conv:
    return impl
  chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f'conv chunk_size must be a positive integer, got {chunk_size!r}.')
  return functools.partial(impl, chunk_size=chunk_size)


def compiler_options(name: str, backend: Optional[str] = None,
                     device_count: Optional[int] = None) -> dict:
  """XLA compile options that go with `name`, for `jax.jit(..., compiler_options=...)`:
  on CPU, 'chunked', 'cpu' and 'patch' also move convolutions to XLA's multi-threaded kernels;
  'default' keeps XLA's defaults; other backends get {}."""
  backend = backend or jax.default_backend()
  if (backend == 'cpu' and resolve(name, backend, device_count) in CPU_TUNED
      and _cpu_options_supported()):
    return dict(CPU_COMPILER_OPTIONS)
  return {}


def choose(name: str, device_count: Optional[int] = None, backend: Optional[str] = None,
           image_shape: Optional[tuple] = None) -> tuple:
  """`(convolution, compiler_options)` of `name` on `device_count` devices for images of
  `image_shape` (H, W, …): the matching pair for `models.create(..., conv_impl=...)` and
  `jax.jit(..., compiler_options=...)`, both from one resolution of 'auto'."""
  resolved = resolve(name, backend, device_count, image_shape)
  return get(resolved), compiler_options(resolved, backend)


@functools.lru_cache(maxsize=None)
def _cpu_options_supported() -> bool:
  """False when this jaxlib's XLA does not know the options (they are experimental)."""
  try:
    x = jax.device_put(np.float32(0), jax.local_devices(backend='cpu')[0])
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(x).compile()
    return True
  except Exception:  # pylint: disable=broad-except
    return False
