"""Small class-folder datasets that tests make themselves, image by image."""
import os

import numpy as np
from PIL import Image

CLASSES = ('cat', 'dog', 'emu')
SIZE = (8, 8)


def save_image(path, array, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt)


def make_folder(root, *, per_class=(6, 2), splits=('train', 'test'), size=SIZE, seed=0,
                classes=CLASSES):
  """PNG images (lossless, so their pixels are known) in `root/<split>/<class>/`: the
  first image of each train class greyscale, the second RGBA. Returns {split: (images
  as RGB, labels)} in sorted file order."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in zip(splits, per_class):
    images, labels = [], []
    for label, name in enumerate(classes):
      for i in range(n):
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        path = f'{root}/{split}/{name}/{i:03d}.png'
        if split == 'train' and i == 0:
          grey = rng.integers(0, 256, size, dtype=np.uint8)
          save_image(path, grey)
          rgb = np.repeat(grey[..., None], 3, -1)
        elif split == 'train' and i == 1:
          save_image(path, np.concatenate([rgb, rng.integers(0, 256, (*size, 1), np.uint8)], -1))
        else:
          save_image(path, rgb)
        images.append(rgb)
        labels.append(label)
    out[split] = (np.stack(images), np.array(labels))
  return out
