"""Input pipelines: TFDS datasets to per-process uint8 host batches.

Importing this package is cheap: TensorFlow and the TFDS builders load on first use.
"""
from oracle_jax.data.datasets import spec_for
from oracle_jax.data.pipeline import eval_iterator
from oracle_jax.data.pipeline import train_iterator
from oracle_jax.data.sources import DatasetNotFoundError
from oracle_jax.data.sources import num_examples
from oracle_jax.data.specs import dataset_spec
from oracle_jax.data.specs import DatasetSpec
from oracle_jax.data.specs import is_folder
from oracle_jax.data.specs import normalize
from oracle_jax.data.specs import record

__all__ = [
    'DatasetNotFoundError', 'DatasetSpec', 'dataset_spec', 'eval_iterator', 'is_folder',
    'normalize', 'num_examples', 'record', 'spec_for', 'train_iterator',
]
