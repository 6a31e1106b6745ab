"""The analysis of a teacher as one call: config and checkpoint in, report out."""
from absl import logging
import jax

from oracle_jax import conv
from oracle_jax import data
from oracle_jax import errors
from oracle_jax import parallel
from oracle_jax import teachers
from oracle_jax.analysis import evaluation
from oracle_jax.analysis import report

DEFAULT_GAMMAS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def parse_gammas(values):
  """Sorted distinct γ ≥ 0 from strings or numbers."""
  message = f'gammas must be a non-empty list of numbers >= 0, got {list(values)}.'
  try:
    gammas = sorted({float(v) for v in values})
  except ValueError:
    raise errors.ConfigError(message) from None
  if not gammas or gammas[0] < 0:
    raise errors.ConfigError(message)
  return tuple(gammas)


def write_results(out_dir, evaluated, gammas, *, setup, temperature, silhouette_examples,
                  tsne_examples, class_names=()):
  """Tables, γ selection and figures from `evaluation.evaluate`'s output; writes them on
  process 0."""
  scratch, results = evaluation.results_per_gamma(
      evaluated, gammas, temperature=temperature, silhouette_examples=silhouette_examples)
  selected = evaluation.select_gamma(results)
  # At γ = 0 the x* panel would repeat x: show the largest γ instead.
  shown = results[gammas.index(selected if selected > 0 else gammas[-1])]
  diagrams = {f'x (ECE {scratch["ece"]:.4f})': scratch['reliability'],
              f'x* at γ = {shown["gamma"]:g} (ECE {shown["ece"]:.4f})': shown['reliability']}
  logging.info('Running t-SNE on %d examples per γ', tsne_examples)
  embeddings = evaluation.tsne_embeddings(evaluated, gammas, temperature=temperature,
                                          num_examples=tsne_examples)
  n = scratch['num_examples']
  setup = {**setup, 'τ': f'{temperature:g}', 'examples': n,
           'subsamples': f'silhouette on {min(silhouette_examples, n)}, t-SNE on '
                         f'{min(tsne_examples, n)} examples'}
  coarse = 'coarse_label' in evaluated['sample']
  if jax.process_index() == 0:
    report.write_report(out_dir, results, scratch, setup=setup, embeddings=embeddings,
                        tsne_colors=evaluated['sample']['coarse_label' if coarse else 'label'],
                        tsne_color_name='superclass' if coarse else 'class',
                        diagrams=diagrams, selected=selected,
                        class_names=() if coarse else class_names)
  return {'scratch': scratch, 'results': results, 'selected': selected}


def run(config, *, teacher, out_dir, gammas=DEFAULT_GAMMAS, split=None, num_bins=15,
        temperature=None, tsne_examples=1000, silhouette_examples=2000, max_examples=0):
  """The whole analysis of `teacher` under `config`: writes the report into `out_dir`
  and returns `{'scratch', 'results' (the report.json records), 'selected'}`.

  Reads only `dataset`, `data_dir`, `teacher.{model,checkpoint,small_stem}`,
  `oracle.{steps,reference_batch_size}`, `temperature` and `batch_size` of `config`.
  """
  gammas = parse_gammas(gammas)
  temperature = config.temperature if temperature is None else temperature
  if num_bins < 1 or temperature <= 0 or tsne_examples < 2 or silhouette_examples < 2:
    raise errors.ConfigError('num_bins must be >= 1, temperature > 0, and tsne_examples and '
                     'silhouette_examples >= 2.')
  teacher = teacher or config.teacher.checkpoint
  mesh = parallel.make_mesh()
  spec = data.spec_for(config)
  conv_impl, compiler_options = conv.choose(config.conv_impl, mesh.size,
                                                 image_shape=spec.image_shape)
  model, variables = teachers.load(config, spec, checkpoint=teacher, conv_impl=conv_impl)
  parallel.check_batch_size(config.batch_size, mesh)  # Before reading any data.
  split = split or spec.eval_split
  batches = data.eval_iterator(spec, data_dir=config.data_dir or None,
                               global_batch_size=config.batch_size, split=split)
  logging.info('Evaluating %s on %s for γ = %s', teacher, spec.name, gammas)
  evaluated = evaluation.evaluate(
      model, variables, batches, spec, gammas=gammas, global_batch_size=config.batch_size,
      steps=config.oracle.steps, reference_batch_size=config.oracle.reference_batch_size,
      num_bins=num_bins, temperature=temperature,
      sample_size=max(tsne_examples, silhouette_examples), max_examples=max_examples,
      num_examples=data.num_examples(spec, config.data_dir or None, split), mesh=mesh,
      compiler_options=compiler_options)
  setup = {'teacher': f'{config.teacher.model} from {teacher}',
           'dataset': f'{spec.name}, split {split}',
           'oracle': f'{config.oracle.steps} step(s), γ quoted at batch '
                     f'{config.oracle.reference_batch_size}',
           'ECE bins': num_bins}
  if spec.class_names:
    setup['classes'] = ', '.join(spec.class_names)
  return write_results(out_dir, evaluated, gammas, setup=setup, temperature=temperature,
                       silhouette_examples=silhouette_examples, tsne_examples=tsne_examples,
                       class_names=spec.class_names)
