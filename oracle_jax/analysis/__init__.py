"""The paper's Section 4.1 measurements of a frozen teacher on x and on oracle inputs x*.

For every γ of a sweep, one pass over a split gives, on x ("scratch") and on x*:
top-1 (Table 1), Expected Calibration Error (Eq. 5, Table 2), the entropy in bits of
softmax(logits/τ) (Table 3), and on a uniform subsample the silhouette score (Eq. 6,
Figure 4) and t-SNE (Figure 3) of the teacher's outputs.

Which outputs: silhouette and t-SNE use the soft targets softmax(logits/τ), the very
thing the student distils from in Step B. Raw logits carry a per-example offset that
softmax ignores but Euclidean distances do not, so they would measure something the
student never sees.

`metrics` measures one set of outputs, `evaluation` streams a split through the teacher
(one compiled step for x and every γ), `report` writes report.md, report.json and the
figures, and `command.run` ties them together (`launch/analyze.py`).
"""
from oracle_jax.analysis.command import DEFAULT_GAMMAS
from oracle_jax.analysis.command import run
from oracle_jax.analysis.report import override_line

__all__ = ['DEFAULT_GAMMAS', 'override_line', 'run']
