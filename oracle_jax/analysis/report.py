"""The analysis report: report.json, report.md (the paper's Tables 1-3, silhouette per γ,
the selected γ) and the PNG figures (reliability diagrams, t-SNE, the γ sweep)."""
import io
import math

import numpy as np

from oracle_jax import fileio

FIGURES = ('reliability.png', 'tsne.png', 'gamma_sweep.png')


def override_line(gamma):
  return f'--config.oracle.gamma={gamma:g}'


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, np.generic)):
    return _jsonable(value.tolist())
  if isinstance(value, float) and math.isnan(value):
    return None  # JSON has no NaN.
  return value


def _fmt(value, digits):
  return 'n/a' if value is None or math.isnan(value) else f'{value:.{digits}f}'


def markdown(results, scratch, setup, *, selected):
  """report.md: the paper's Tables 1-3, silhouette per γ, the selected γ and figures."""
  coarse = 'silhouette_coarse' in scratch
  lines = ['# Oracle teacher analysis', '']
  lines += [f'* {k}: {v}' for k, v in setup.items()] + ['']
  lines += ['## Table 1: top-1 accuracy (%) of the teacher on x (scratch) and x* (oracle)',
            '', '| γ | scratch | oracle | Δ |', '|---:|---:|---:|---:|']
  lines += [f'| {r["gamma"]:g} | {_fmt(scratch["top1"], 2)} | {_fmt(r["top1"], 2)} '
            f'| {r["top1"] - scratch["top1"]:+.2f} |' for r in results]
  lines += ['', f'## Table 2: Expected Calibration Error ({setup["ECE bins"]} equal-width '
            'bins, softmax at τ = 1; fraction)', '',
            '| γ | ECE on x | ECE on x* |', '|---:|---:|---:|']
  lines += [f'| {r["gamma"]:g} | {_fmt(scratch["ece"], 4)} | {_fmt(r["ece"], 4)} |'
            for r in results]
  lines += ['', f'## Table 3: mean entropy (bits) of softmax(logits/τ), τ = '
            f'{setup["τ"]}', '', '| γ | on x | on x* |', '|---:|---:|---:|']
  lines += [f'| {r["gamma"]:g} | {_fmt(scratch["entropy_bits"], 4)} '
            f'| {_fmt(r["entropy_bits"], 4)} |' for r in results]
  header = '| γ | fine' + (' | coarse |' if coarse else ' |')
  lines += ['', '## Silhouette score of softmax(logits/τ) on x* (Figure 4)', '', header,
            '|---:|---:|' + ('---:|' if coarse else '')]
  lines += [f'| {r["gamma"]:g} | {_fmt(r["silhouette_fine"], 4)}'
            + (f' | {_fmt(r["silhouette_coarse"], 4)} |' if coarse else ' |')
            for r in results]
  lines += ['', '## Selected γ', '',
            f'γ = {selected:g} maximises the fine-label silhouette score. For launch/main.py:',
            '', '```', override_line(selected), '```', '', '## Figures', '']
  lines += [f'![{name}]({name})' for name in FIGURES]
  return '\n'.join(lines) + '\n'


def _figure(ncols, nrows=1, size=4.0):
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  # A bare Figure renders with Agg and leaves pyplot's global backend alone.
  fig = figure.Figure(figsize=(size * ncols, size * nrows), layout='constrained')
  return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def plot_reliability(path, diagrams):
  """Reliability diagrams: {title: diagram}; bars are per-bin accuracy, line is ideal."""
  fig, axes = _figure(len(diagrams))
  for ax, (title, d) in zip(axes, diagrams.items()):
    num_bins = len(d['count'])
    centers = (np.arange(num_bins) + 0.5) / num_bins
    ax.bar(centers, np.nan_to_num(d['accuracy']), width=1 / num_bins, edgecolor='k',
           label='accuracy')
    ax.bar(centers, np.nan_to_num(d['confidence'] - d['accuracy']),
           bottom=np.nan_to_num(d['accuracy']), width=1 / num_bins, color='tab:red',
           alpha=0.3, label='gap')
    ax.plot([0, 1], [0, 1], 'k--', lw=1)
    ax.set(title=title, xlabel='confidence', ylabel='accuracy', xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc='upper left')
  _save_figure(fig, path)


def plot_tsne(path, embeddings, colors, color_name, names=()):
  """One t-SNE panel per γ, points coloured by `colors` (superclass or class), the legend
  naming them by `names` (a folder dataset's classes) where given."""
  fig, axes = _figure(min(4, len(embeddings)), math.ceil(len(embeddings) / 4))
  cmap = 'tab10' if colors.max() < 10 else 'tab20' if colors.max() < 20 else 'nipy_spectral'
  for ax, (gamma, xy) in zip(axes, embeddings.items()):
    points = ax.scatter(xy[:, 0], xy[:, 1], c=colors[:len(xy)], cmap=cmap, s=4)
    ax.set(title=f'x* at γ = {gamma:g}' if gamma else 'x (γ = 0)', xticks=[], yticks=[])
  if colors.max() < 20:  # A legend of 100 classes would hide the plot.
    handles, labels = points.legend_elements(num=None)  # one entry per value shown
    if names:
      labels = [names[int(v)] for v in np.unique(colors[:len(xy)])]
    axes[0].legend(handles, labels, loc='best', fontsize='small', ncol=2)
  for ax in axes[len(embeddings):]:
    ax.set_axis_off()
  fig.suptitle(f't-SNE of softmax(logits/τ), coloured by {color_name}')
  _save_figure(fig, path)


def plot_sweep(path, results, scratch):
  """Silhouette and top-1 versus γ, the best γ of each curve marked."""
  fig, (ax_s, ax_a) = _figure(2)
  gammas = np.array([r['gamma'] for r in results])
  for name in ('fine', 'coarse'):
    key = f'silhouette_{name}'
    if key in scratch:
      values = np.array([r[key] for r in results])
      ax_s.plot(gammas, values, 'o-', label=name)
      if not np.all(np.isnan(values)):
        best = np.nanargmax(values)
        ax_s.plot(gammas[best], values[best], 'k*', ms=14)
  top1 = np.array([r['top1'] for r in results])
  ax_a.plot(gammas, top1, 'o-', label='oracle (x*)')
  ax_a.axhline(scratch['top1'], color='gray', ls='--', label='scratch (x)')
  ax_a.plot(gammas[np.argmax(top1)], top1.max(), 'k*', ms=14)
  positive = gammas[gammas > 0]
  for ax, ylabel in ((ax_s, 'silhouette score'), (ax_a, 'top-1 (%)')):
    if positive.size:  # γ spans decades and includes 0: linear near 0, log beyond.
      ax.set_xscale('symlog', linthresh=positive.min())
    ax.set(xlabel='γ', ylabel=ylabel)
    ax.legend()
  _save_figure(fig, path)


def _save_figure(fig, path):
  # Rendered in memory, then written through the path layer (atomic; gs:// works).
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  fileio.write_bytes(path, buffer.getvalue())


def write_report(out_dir, results, scratch, *, setup, embeddings, tsne_colors,
                 tsne_color_name, diagrams, selected, class_names=()):
  out_dir = fileio.path(out_dir)
  fileio.write_json(out_dir / 'report.json',
                    _jsonable([{**r, 'selected': r['gamma'] == selected} for r in results]),
                    indent=1)
  fileio.write_text(out_dir / 'report.md', markdown(results, scratch, setup, selected=selected))
  plot_reliability(out_dir / 'reliability.png', diagrams)
  plot_tsne(out_dir / 'tsne.png', embeddings, tsne_colors, tsne_color_name, class_names)
  plot_sweep(out_dir / 'gamma_sweep.png', results, scratch)
