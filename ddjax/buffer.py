r"""ddjax's expert-buffer command line: build the expert trajectories a config's run would use.

    python -m ddjax.buffer --config=configs/pad.py [--config.expert.num_experts=20]
    python -m ddjax.buffer                      # configs/buffer.py: MTT's CPU-default buffer

Trains the buffer (`ddjax.distill.experts.get_buffer`) into the directory the run would read
(`expert.dir`, or runs/buffers/<dataset>_<hash>), resumes a killed job at its last finished
epoch, or reports a complete buffer; one progress line per epoch. With BiLP's preemptive pruning
on (bilp.prune_fraction > 0) the experts train on the pruned data, as the run's would, and the
scores are cached in the run's --workdir. Errors are one line on stderr with exit status 1
(--debug shows the traceback).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging

DEFAULT_CONFIG = 'configs/buffer.py'


def with_default_config(argv: list[str]) -> list[str]:
  """argv with --config=configs/buffer.py when it names no --config."""
  if any(a == '--config' or a.startswith('--config=') for a in argv[1:]):
    return list(argv)
  return [argv[0], f'--config={DEFAULT_CONFIG}', *argv[1:]]


if __name__ == '__main__':   # config_flags reads sys.argv when ddjax.main defines --config
  sys.argv[:] = with_default_config(sys.argv)

from ddjax.main import fail, parse_flags  # noqa: E402  (defines --config, --workdir, --debug)


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  from ddjax.config import validate
  from ddjax.data import DatasetNotFoundError
  from ddjax.infra import distributed
  cfg = flags.FLAGS.config
  try:
    validate(cfg)
    distributed.initialize(cfg.distributed)   # several processes share the experts out
    with distributed.quiet_unless_main():      # process 0 prints (and writes the buffer)
      build(cfg)
  except (ValueError, DatasetNotFoundError) as err:
    fail(err)


def build(cfg) -> None:
  """Load the data (pruned as the run would), train or open the buffer, print its summary."""
  from ddjax.distill import experts
  from ddjax.runtime import pipeline
  data = pipeline.load_data(cfg)
  if cfg.bilp.prune_fraction > 0:
    from ddjax.runtime.pruning import preemptive_prune
    workdir = flags.FLAGS.workdir or pipeline.default_workdir(cfg)
    pipeline.check_workdir(cfg, workdir)
    data, _ = preemptive_prune(cfg, data, workdir)
  path = experts.buffer_dir(cfg, data)
  e = cfg.expert
  print(f'[experts] {data.dataset.name}: {e.num_experts} experts x {e.epochs} epochs of '
        f'{cfg.model.arch}-{cfg.model.depth} width {cfg.model.width} in {path}', flush=True)
  buf = experts.get_buffer(cfg, data)
  acc = buf.index.get('final_test_acc')
  state = 'trained now' if buf.trained_now else 'complete already'
  line = (f'[experts] {buf.path}: {buf.num_experts} experts x {buf.num_epochs} epochs, '
          f'{buf.dim} parameters per snapshot ({state})')
  if acc:
    line += f'; final test accuracy {100 * sum(acc) / len(acc):.2f} % (mean of {len(acc)})'
  print(line, flush=True)
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
