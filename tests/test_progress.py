"""The progress display: counts, rate, ETA and figures."""

import io

from quantum_alpha_jax.progress import Progress


def test_progress_lines_report_counts_eta_and_figures():
  stream = io.StringIO()
  progress = Progress(total=4, description='train', unit='steps', interval_seconds=0.0, stream=stream)
  progress.update(1, loss=0.5)
  progress.update(3, loss=0.25)
  progress.close()
  lines = stream.getvalue().strip().split('\n')
  assert len(lines) == 2  # one per update; close() does not repeat the final line
  assert lines[0].startswith('train: 1/4 | ') and 'steps/s' in lines[0] and 'ETA' in lines[0]
  assert 'loss 0.5' in lines[0] and lines[1].startswith('train: 4/4') and 'loss 0.25' in lines[1]
