"""Grids of runs (methods × oracle × seeds) and their tables.

Single-run, best-epoch numbers are not reproducible; the tables report the last-epoch and
the best-epoch top-1 as mean ± std over seeds, and each method's paired difference from a
baseline (same seed: same init, batches and augmentation).
"""
import copy
import csv
import hashlib
import io
import logging

import numpy as np

from oracle_jax import errors, fileio, methods, parallel, train, validation
from oracle_jax import population as population_lib


GAMMA = '_gamma'  # 'oracle_kd_gamma0.5': oracle KD at γ 0.5 (`with_gammas`)


def variant(name):
  """'kd' → ('kd', False); 'oracle_kd' → ('kd', True); 'scratch' → ('scratch', False);
  'oracle_kd_gamma0.5' → ('kd', True), at γ 0.5 (`gamma_of`)."""
  name = name.split(GAMMA)[0]
  oracle = name.startswith('oracle_')
  return name[len('oracle_'):] if oracle else name, oracle


def gamma_of(name):
  """The γ a variant's name sets ('oracle_kd_gamma0.5' → 0.5), or None: the config's."""
  if GAMMA not in name:
    return None
  base, value = name.split(GAMMA, 1)
  try:
    gamma = float(value)
  except ValueError:
    gamma = float('nan')
  if not base.startswith('oracle_') or not 0 <= gamma < float('inf'):
    raise errors.ConfigError(f'Variant {name!r}: a γ suffix needs an oracle variant and a '
                             f'finite γ >= 0, e.g. oracle_kd{GAMMA}0.5.')
  return gamma


def with_gammas(names, gammas):
  """Each oracle variant once per γ (`--gammas`): a γ search in one grid."""
  out = []
  for name in names:
    if name.startswith('oracle_') and gammas:
      out += [f'{name}{GAMMA}{float(g):g}' for g in gammas]
    else:
      out.append(name)
  return out


POPULATION_MODES = ('auto', 'off')


def variant_config(config, name, seed):
  method, oracle = variant(name)
  gamma = gamma_of(name)
  c = copy.deepcopy(config)
  c.method, c.oracle.enabled, c.seed = method, oracle, seed
  if gamma is not None:
    c.oracle.gamma = gamma
  return c


def grid(config, names, seeds):
  """The (name, seed, config) of every run of the grid."""
  return [(name, seed, variant_config(config, name, seed)) for name in names for seed in seeds]


def _check_mode(population):
  if population not in POPULATION_MODES:
    raise errors.ConfigError(f'population must be one of {POPULATION_MODES}, got '
                             f'{population!r}.')


def plan(config, names, seeds, population='auto', mesh=None):
  """What `run_grid` will do, for --dry_run: the checks of a run's dry run (config, data,
  teacher, devices) and its sizes, then the groups of runs, each a population (with its
  mesh: members × batch shards) or a lone run."""
  _check_mode(population)
  mesh = mesh or parallel.make_mesh()
  runs = grid(config, names, seeds)
  for _, _, c in runs:
    validation.validate_config(c)
  run, _ = train.prepare(runs[0][2], mesh=mesh)
  # The sizes of the first run; method, oracle and per-device batch differ between groups.
  sizes = {k: v for k, v in train.plan(runs[0][2], run).items()
           if k not in ('method', 'oracle', 'per_device_batch')}
  groups = []
  for members in population_groups(runs, population == 'auto'):
    group = dict(runs=[f'{name}_seed{seed}' for name, seed, _ in members])
    if len(members) > 1:
      shape = population_lib.make_mesh(len(members), list(mesh.devices.flat)).devices.shape
      group['mesh'] = dict(member=shape[0], data=shape[1])
    groups.append(group)
  return dict(sizes, runs=len(runs), groups=groups)


def run_grid(config, workdir, names, seeds, population='auto', mesh=None):
  """Trains every (name, seed) in `workdir/<name>_seed<seed>` (each resumable); returns
  `{name: [results per seed]}`. `population='auto'` trains the variants that can share
  one program (`population_groups`) as one population (`population.py`); 'off', and variants that
  cannot, run one after another (seeds of one variant share a compilation).
  Either way each run's results are its own (on one device, bit for bit the same). `mesh`:
  the devices (default all)."""
  _check_mode(population)
  workdir = fileio.path(workdir)
  mesh = mesh or parallel.make_mesh()
  for name in names:
    method, _ = variant(name)
    if methods.is_distilled(method) and method != config.method:
      logging.warning(
          "Variant %r runs under this config's %s recipe (ce_weight %g, temperature %g); "
          'for its own recipe sweep a config built for it (e.g. configs/cifar.py:T,S,'
          'method=%s[,recipe=published]).', name, config.method, config.ce_weight,
          config.temperature, method)
  runs = grid(config, names, seeds)
  results = {}
  compiled = {}
  for members in population_groups(runs, population == 'auto'):
    if len(members) > 1:
      population_members = [population_lib.Member(f'{name}_seed{seed}', c,
                                                  workdir / f'{name}_seed{seed}')
                            for name, seed, c in members]
      directory = workdir / 'populations' / population_name(population_members)
      for (name, seed, _), r in zip(members, population_lib.train_population(
          population_members, directory, mesh=mesh)):
        results[name, seed] = r
      continue
    (name, seed, c), = members
    compiled[name] = compiled.get(name) or train.Run(c, mesh)
    results[name, seed] = train.train_and_evaluate(
        c, workdir / f'{name}_seed{seed}', run=compiled[name])
  return {name: [results[name, seed] for seed in seeds] for name in names}


def population_groups(runs, share):
  """`runs` ((name, seed, config) triples) in groups, one population each: with `share`,
  the compatible runs (`population.compatibility_key`) of one distilled method, scratch
  runs joining the first such group; otherwise, and for unsupported runs, one run each."""
  key_of = lambda c: population_lib.compatibility_key(c) if (
      share and population_lib.supported(c)) else None
  first_method = {}  # compatibility key → the first distilled method with it
  for _, _, c in runs:
    if key_of(c) is not None and methods.is_distilled(c):
      first_method.setdefault(key_of(c), c.method)
  groups = {}
  for name, seed, c in runs:
    key = key_of(c)
    method = c.method if methods.is_distilled(c) else first_method.get(key, c.method)
    group = (name, seed) if key is None else (key, method)
    groups.setdefault(group, []).append((name, seed, c))
  return list(groups.values())


def population_name(members):
  """A population's checkpoint directory name: stable for the same members."""
  digest = hashlib.sha256('\n'.join(sorted(m.name for m in members)).encode()).hexdigest()
  return f'{len(members)}_members_{digest[:10]}'


def _mean_std(values):
  values = np.asarray(values, np.float64) * 100
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(results, baseline):
  """Per name: final/best top-1 (%) mean and std over seeds, and the paired difference of
  the final top-1 from `baseline` (None if the baseline is absent)."""
  rows = {}
  for name, runs in results.items():
    final, best = [r['final_top1'] for r in runs], [r['best_top1'] for r in runs]
    row = dict(final_mean=_mean_std(final)[0], final_std=_mean_std(final)[1],
               best_mean=_mean_std(best)[0], best_std=_mean_std(best)[1],
               seeds=len(runs), final_runs=[100 * v for v in final])
    if baseline in results and name != baseline:
      diff = np.subtract(final, [r['final_top1'] for r in results[baseline]])
      row['diff_mean'], row['diff_std'] = _mean_std(diff)
    if runs[0].get('reference_top1'):  # the published figure the config reproduces
      row['reference_top1'] = runs[0]['reference_top1']
      row['best_minus_reference'] = row['best_mean'] - row['reference_top1']
    rows[name] = row
  return rows


def report(results, baseline):
  """What launch/sweep.py prints and writes to sweep.md: the caption, then the table."""
  return caption(results) + '\n\n' + markdown(summarize(results, baseline), baseline)


def caption(results):
  """One line naming the data of a sweep's runs (a folder dataset's classes too)."""
  first = next(iter(results.values()))[0]
  names = first.get('class_names')
  return f'Dataset {first["dataset"]}' + (
      f', {len(names)} classes: {", ".join(names)}.' if names else '.')


def markdown(rows, baseline):
  """The table; with a published figure (config.reference_top1), two more columns: it and
  our mean best top-1 minus it."""
  reference = any('reference_top1' in r for r in rows.values())
  extra = ' released best top-1 (%) | best − released |' if reference else ''
  lines = [f'| method | final top-1 (%) | best top-1 (%) | paired diff. of final vs {baseline} |'
           + extra, '|---|---|---|---|' + '---|---|' * reference]
  for name, r in rows.items():
    diff = (f'{r["diff_mean"]:+.2f} ± {r["diff_std"]:.2f}' if 'diff_mean' in r else '—')
    line = (f'| {name} | {r["final_mean"]:.2f} ± {r["final_std"]:.2f} | '
            f'{r["best_mean"]:.2f} ± {r["best_std"]:.2f} | {diff} |')
    if reference:
      line += (f' {r["reference_top1"]:.2f} | {r["best_minus_reference"]:+.2f} |'
               if 'reference_top1' in r else ' — | — |')
    lines.append(line)
  return '\n'.join(lines)


def to_csv(rows):
  keys = ['method', 'seeds', 'final_mean', 'final_std', 'best_mean', 'best_std', 'diff_mean',
          'diff_std']
  if any('reference_top1' in r for r in rows.values()):
    keys += ['reference_top1', 'best_minus_reference']
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, keys, extrasaction='ignore')
  writer.writeheader()
  for name, r in rows.items():
    writer.writerow({'method': name, **r})
  return buffer.getvalue()
