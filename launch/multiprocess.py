r"""Run one ddjax job as N processes on this machine, joined by JAX's distributed runtime.

    python launch/multiprocess.py --num_processes=2 --devices_per_process=2 -- \
        --config=configs/frepo_isa.py --workdir=runs/two_procs
    python launch/multiprocess.py --num_processes=8 --platform=gpu -- --config=...  # 1 GPU each
    python launch/multiprocess.py ... --dry_run      # print the command lines, start nothing

Everything after `--` goes to `python -m ddjax.main` unchanged. Process i gets
`--config.distributed.{coordinator_address,num_processes,process_id}` (coordinator localhost on a
free port, or --port); on CPU (the default platform) JAX_PLATFORMS=cpu and
`--xla_force_host_platform_device_count=K` give every process K CPU devices, and the processes'
collectives go through gloo (cfg.distributed.cpu_collectives); on GPUs process i owns GPUs
i*K ... i*K+K-1 (`--config.distributed.local_device_ids`). With one process nothing distributed
is passed: it is the plain single-process command.

Process 0 prints the run's progress (the others print only warnings and errors). When a process
fails, the others are stopped (they would otherwise wait in a collective) and the launcher exits
with the failed process's status; re-running the same command resumes from the last checkpoint.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import Sequence

PLATFORMS = ('cpu', 'gpu')


def free_port() -> int:
  """A TCP port that was free a moment ago on localhost (the coordinator's)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def process_commands(num_processes: int, devices_per_process: int, args: Sequence[str], *,
                     port: int, platform: str = 'cpu', python: str = sys.executable,
                     entry: Sequence[str] = ('-m', 'ddjax.main'),
                     environ: dict | None = None) -> list[tuple[dict, list[str]]]:
  """[(environment additions, argv)] of every process, process 0 first.

  args: the flags for ddjax.main. entry: what python runs (default `-m ddjax.main`; any program
  that takes ddjax.main's flags). environ: the environment the additions extend (XLA_FLAGS is
  appended to, not replaced); default os.environ.
  """
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError(f'--num_processes={num_processes} and --devices_per_process='
                     f'{devices_per_process} must both be >= 1.')
  if platform not in PLATFORMS:
    raise ValueError(f'--platform={platform!r} is not one of {PLATFORMS}.')
  environ = os.environ if environ is None else environ
  env = {}
  if platform == 'cpu':
    flags = environ.get('XLA_FLAGS', '').split()
    flags = [f for f in flags if not f.startswith('--xla_force_host_platform_device_count')]
    flags.append(f'--xla_force_host_platform_device_count={devices_per_process}')
    env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ' '.join(flags)}
  out = []
  for i in range(num_processes):
    argv = [python, *entry, *args]
    if num_processes > 1:
      argv += [f'--config.distributed.coordinator_address=localhost:{port}',
               f'--config.distributed.num_processes={num_processes}',
               f'--config.distributed.process_id={i}']
      if platform == 'gpu':
        ids = ','.join(str(i * devices_per_process + d) for d in range(devices_per_process))
        argv.append(f'--config.distributed.local_device_ids=({ids},)')
    out.append((dict(env), argv))
  return out


def format_command(env: dict, argv: Sequence[str]) -> str:
  """One shell line: `VAR=value ... python ...`."""
  return ' '.join([f'{k}={shlex.quote(v)}' for k, v in env.items()] + [shlex.join(argv)])


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + grace
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def launch(commands: list[tuple[dict, list[str]]], poll: float = 0.2) -> int:
  """Start every command (environment = os.environ + its additions) and wait for all of them.
  The first process to fail stops the others; returns its exit status (0 when all succeed;
  128 + n for a process killed by signal n)."""
  procs = [subprocess.Popen(argv, env={**os.environ, **env}) for env, argv in commands]
  try:
    while True:
      codes = [p.poll() for p in procs]
      failed = [c for c in codes if c not in (None, 0)]
      if failed:
        _stop(procs)
        code = failed[0]
        return 128 - code if code < 0 else code
      if all(c == 0 for c in codes):
        return 0
      time.sleep(poll)
  except BaseException:
    _stop(procs)
    raise


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      usage='python launch/multiprocess.py [options] -- <ddjax.main flags>')
  parser.add_argument('--num_processes', '-n', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1,
                      help='CPU devices (forced) or GPUs of each process (default 1)')
  parser.add_argument('--platform', choices=PLATFORMS, default='cpu')
  parser.add_argument('--port', type=int, default=0, help="the coordinator's (0: a free one)")
  parser.add_argument('--entry', default='-m ddjax.main',
                      help='what each python runs (default: -m ddjax.main)')
  parser.add_argument('--dry_run', '--dry-run', action='store_true',
                      help='print the command lines and start nothing')
  argv = list(sys.argv[1:] if argv is None else argv)
  split = argv.index('--') if '--' in argv else len(argv)
  opts = parser.parse_args(argv[:split])
  try:
    commands = process_commands(opts.num_processes, opts.devices_per_process, argv[split + 1:],
                                port=opts.port or free_port(), platform=opts.platform,
                                entry=shlex.split(opts.entry))
  except ValueError as e:
    parser.error(str(e))
  if opts.dry_run:
    for env, cmd in commands:
      print(format_command(env, cmd))
    return 0
  return launch(commands)


if __name__ == '__main__':
  sys.exit(main())
