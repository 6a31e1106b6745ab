"""Vectorized numpy augmentation whose randomness is a pure function of position.

Each example's random crop and flip come from a hash of (seed, its global position
in the training stream), so they are the same however many processes share the
batch, and on resume, with no random state to save.
"""
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def example_bits(seed, positions):
  """64 random bits per position: splitmix64 of (seed, position)."""
  seed = _splitmix64(np.array([seed], np.uint64))
  return _splitmix64(seed + np.asarray(positions, np.uint64) * _GOLDEN)


def pad_crop_flip(images, bits, *, pad, flip):
  """Zero-pad by `pad`, crop back to size at a random offset, maybe flip left-right.

  The torchvision `RandomCrop(size, padding=pad)` + `RandomHorizontalFlip()` of
  the official CIFAR code, for a batch [B, H, W, C] at once; `bits` from
  `example_bits` pick each image's offsets (and flip).
  """
  b, h, w, c = images.shape
  shifts = 2 * pad + 1
  dy = (bits % shifts).astype(np.intp)
  dx = ((bits >> np.uint64(16)) % shifts).astype(np.intp)
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = dy[:, None] + np.arange(h)
  cols = dx[:, None] + np.arange(w)
  if flip:
    flipped = ((bits >> np.uint64(32)) & np.uint64(1)).astype(bool)
    cols = np.where(flipped[:, None], cols[:, ::-1], cols)
  # One gather of whole pixels from the flattened batch: faster than indexing the
  # four axes separately (benchmarks/README.md).
  pixels = ((np.arange(b)[:, None, None] * (h + 2 * pad) + rows[:, :, None])
            * (w + 2 * pad) + cols[:, None, :])
  return np.take(padded.reshape(-1, c), pixels, axis=0)


def _splitmix64(x):
  # The splitmix64 finalizer: a bijection that mixes every input bit into
  # every output bit; uint64 arithmetic wraps, as the algorithm intends.
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))
