"""Writes this folder's seed checkpoints with torch (run once; the files are committed):
python tests/data/pth_fuzz/make_corpus.py"""
import pathlib
import sys
import types

import torch

HERE = pathlib.Path(__file__).parent


def tiny_net():
  torch.manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                            torch.nn.Flatten(), torch.nn.Linear(4, 2))
  return net


def module_of_class(package):
  """A whole pickled module of class `<package>.Net`, as the user's model code makes it."""
  if package not in sys.modules:
    fake = types.ModuleType(package)
    fake.Net = type('Net', (torch.nn.Module,), {'__module__': package})
    sys.modules[package] = fake
    sys.modules.setdefault(package.split('.')[0], types.ModuleType(package.split('.')[0]))
  net = sys.modules[package].Net()
  net.features = tiny_net()
  net.register_buffer('scratch', torch.ones(2), persistent=False)
  return net


def main():
  state = tiny_net().state_dict()
  base = torch.arange(24, dtype=torch.float32)
  views = {'base': base, 'slice': base[5:9], 'transposed': base.view(4, 6).t(),
           'half': torch.tensor([1.5, -2.0], dtype=torch.float16),
           'bfloat16': torch.tensor([1.5, 3.0], dtype=torch.bfloat16),
           'long': torch.tensor([1, -(2**40)]), 'empty': torch.zeros(0, 3),
           'scalar': torch.tensor(7.0)}
  files = {
      'state_dict_zip.pth': (state, {}),
      'state_dict_legacy.pth': (state, {'_use_new_zipfile_serialization': False}),
      'wrapped_zip_protocol4.pth': ({'epoch': 3, 'model': state, 'best_acc': 0.5},
                                    {'pickle_protocol': 4}),
      'views_zip.pth': (views, {}),
      'views_legacy.pth': (views, {'_use_new_zipfile_serialization': False}),
      'module_zip.pth': (module_of_class('models.resnet'), {}),
      'module_legacy.pth': (module_of_class('models.resnet'),
                            {'_use_new_zipfile_serialization': False}),
  }
  for name, (obj, kwargs) in files.items():
    torch.save(obj, HERE / name, **kwargs)


if __name__ == '__main__':
  main()
