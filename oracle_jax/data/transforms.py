"""TensorFlow image transforms of the streamed and folder pipelines, stateless: random
ones take an explicit seed, so streams are reproducible and resumable."""
import math

from oracle_jax.data import sources

tf = sources.import_tensorflow()

_EVAL_RESIZE = 256  # torchvision's Resize(256) + CenterCrop(224).
_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults.
_CROP_RATIO = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10
_JPEG_IDCT = 'INTEGER_ACCURATE'  # PIL's (libjpeg's JDCT_ISLOW): torchvision's pixels


def crop_window(image_shape, rng):
  """torchvision RandomResizedCrop's window (top, left, height, width), stateless.

  Ten candidate windows at once (area fraction uniform in _CROP_SCALE, aspect
  ratio log-uniform in _CROP_RATIO); the first that fits wins, else the
  torchvision fallback: the largest central crop with a ratio in range.
  """
  h = tf.cast(image_shape[0], tf.float32)
  w = tf.cast(image_shape[1], tf.float32)
  u = tf.random.stateless_uniform([4, _CROP_ATTEMPTS], rng)
  area = h * w * (_CROP_SCALE[0] + (_CROP_SCALE[1] - _CROP_SCALE[0]) * u[0])
  log_lo, log_hi = math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])
  ratio = tf.exp(log_lo + (log_hi - log_lo) * u[1])
  cw = tf.round(tf.sqrt(area * ratio))
  ch = tf.round(tf.sqrt(area / ratio))
  fits = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
  first = tf.argmax(tf.cast(fits, tf.int32))
  # Fallback, as torchvision: whole image, clipped to the ratio range, centred.
  in_ratio = w / h
  fw = tf.where(in_ratio < _CROP_RATIO[0], w,
                tf.where(in_ratio > _CROP_RATIO[1], tf.round(h * _CROP_RATIO[1]), w))
  fh = tf.where(in_ratio < _CROP_RATIO[0], tf.round(w / _CROP_RATIO[0]), h)
  found = tf.reduce_any(fits)
  ch = tf.where(found, ch[first], fh)
  cw = tf.where(found, cw[first], fw)
  # Offsets uniform over the integers 0..h-ch (torch.randint), centred if fallback.
  top = tf.where(found, tf.floor(u[2][first] * (h - ch + 1)), tf.round((h - ch) / 2))
  left = tf.where(found, tf.floor(u[3][first] * (w - cw + 1)), tf.round((w - cw) / 2))
  return tf.cast(tf.stack([top, left, ch, cw]), tf.int32)


def random_resized_crop_and_flip(image_bytes, size, rng):
  """A random window of the image, resized to `size`, flipped half the time. A JPEG's
  window alone is decoded."""
  crop_rng, flip_rng = tf.unstack(tf.random.experimental.stateless_split(rng, 2))

  def jpeg_window():
    window = crop_window(tf.image.extract_jpeg_shape(image_bytes), crop_rng)
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3,
                                         dct_method=_JPEG_IDCT)

  def other_window():  # PNG: decoded whole, then cropped
    image = decode(image_bytes)
    top, left, h, w = tf.unstack(crop_window(tf.shape(image)[:2], crop_rng))
    return image[top:top + h, left:left + w]

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg_window, other_window)
  return _flip(resize_uint8(image, size), flip_rng)


def pad_crop_flip(image, pad, flip, rng):
  """One image's zero-pad, random crop back to its size and maybe flip: augment.py's
  pad_crop_flip, for images streamed through tf.data."""
  crop_rng, flip_rng = tf.unstack(tf.random.experimental.stateless_split(rng, 2))
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  offsets = tf.random.stateless_uniform([2], crop_rng, 0, 2 * pad + 1, tf.int32)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  image = padded[offsets[0]:offsets[0] + h, offsets[1]:offsets[1] + w]
  return _flip(image, flip_rng) if flip else image


def _flip(image, rng):
  flip = tf.random.stateless_uniform([], rng) < 0.5
  return tf.where(flip, tf.reverse(image, axis=[1]), image)


def decode(image_bytes):
  """JPEG or PNG bytes -> uint8 [H, W, 3] with the pixels torchvision's PIL loader gives
  (`Image.open(f).convert('RGB')`): greyscale repeated, alpha dropped, and JPEGs through
  libjpeg's accurate integer IDCT, which PIL uses (TensorFlow's default, the fast one,
  is up to 5 levels off: enough to move a CIFAR-10 teacher's top-1 by 0.1 point)."""
  image = tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method=_JPEG_IDCT),
      lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
  image.set_shape([None, None, 3])
  return image


def resize_to(image, size):
  """`image` resized to `size` (H, W) unless it has that size already."""
  same = tf.reduce_all(tf.shape(image)[:2] == tf.constant(size))
  return tf.cond(same, lambda: image, lambda: resize_uint8(image, size))


def resize_and_center_crop(image, size):
  """torchvision Resize(256) (shorter side) + CenterCrop(224), for `size` 224."""
  shorter = round(size[0] * _EVAL_RESIZE / 224)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = shorter / tf.reduce_min(shape)
  # torchvision truncates the longer side: int(256 * long / short).
  new = tf.where(shape == tf.reduce_min(shape), float(shorter), tf.floor(shape * scale))
  image = resize_uint8(image, tf.cast(new, tf.int32))
  top = tf.cast(tf.round((new[0] - size[0]) / 2), tf.int32)
  left = tf.cast(tf.round((new[1] - size[1]) / 2), tf.int32)
  return tf.image.crop_to_bounding_box(image, top, left, size[0], size[1])


def resize_uint8(image, size):
  """uint8 `image` resized to `size`, antialiased bilinear like PIL's (torchvision's
  default) resize, rounded back to uint8."""
  # Antialiased bilinear, like PIL's (torchvision's default) resize.
  image = tf.image.resize(image, size, method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
