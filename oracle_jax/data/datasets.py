"""The dataset a config names: `spec_for(config)`."""
import dataclasses

from oracle_jax import errors
from oracle_jax.data import folder
from oracle_jax.data import specs


def spec_for(config):
  """The DatasetSpec a config trains on: a built-in one, or a folder dataset's (scanned,
  cached: folder.py); `data_mean`/`data_std`/`eval_split` override a built-in's values."""
  if specs.is_folder(config.dataset):
    return folder.spec(config)
  spec = specs.dataset_spec(config.dataset)
  size = tuple(config.get('image_size', ()))
  if size and size != spec.image_shape[:2]:
    raise errors.ConfigError(
        f'image_size {size} is not {config.dataset}\'s {spec.image_shape[:2]}; resizing '
        'applies to folder datasets (dataset=folder:DIR) only: unset image_size.')
  if config.get('augment', '') not in ('', spec.augment, 'none'):
    raise errors.ConfigError(f'augment={config.augment!r} is not available for '
                             f'{config.dataset}: use \'\' (its own) or \'none\'.')
  return dataclasses.replace(
      spec, mean=tuple(config.get('data_mean', ()) or spec.mean),
      std=tuple(config.get('data_std', ()) or spec.std),
      eval_split=config.get('eval_split', '') or spec.eval_split,
      augment=config.get('augment', '') or spec.augment)
