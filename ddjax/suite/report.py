"""report.md of a suite: the set, what making it cost, then each axis's section."""
from __future__ import annotations

import os

from ddjax.infra import files


def save_figure(fig, path: str) -> str:
  """Lay out a matplotlib Figure and write it as a PNG atomically; returns the path (the plots of
  the axes and the leaderboard)."""
  fig.tight_layout()
  files.write_atomic(path, lambda f: fig.savefig(f, format='png'))
  return path


def _cost_lines(cost: dict | None) -> list[str]:
  if not cost:
    return ['Cost of making the set: not recorded (a set from outside ddjax).']
  parts = []
  for key, label in (('wall_seconds', 'wall s'), ('device_seconds', 'device s'),
                     ('wall_seconds_with_evaluation', 'wall s incl. evaluation'),
                     ('steps', 'steps'), ('sec_per_step', 's/step'), ('device_kind', 'device'),
                     ('devices', 'devices'), ('peak_device_bytes', 'peak device bytes'),
                     ('peak_host_rss_bytes', 'peak host RSS bytes')):
    if cost.get(key) is not None:
      value = cost[key]
      parts.append(f'{label} {value:.4g}' if isinstance(value, float) else f'{label} {value}')
  return ['Cost of making the set: ' + ', '.join(parts) + '.']


def render(results: dict, specs) -> str:
  s = results['set']
  lines = [f'# Suite report: {s["name"]}', '',
           f'{s["images"]} images ({s["classes"]} classes, IPC {s["ipc"]}, '
           f'{"hard" if s["hard_labels"] else "soft / learned"} labels) from {s["path"]} '
           f'({s["source"]}); method {s["method"] or "unknown"}, data {s["dataset"]}, own '
           f'protocol {s["protocol"]}. Preset {results["settings"]["preset"]}, '
           f'{results["settings"]["num_models"]} networks per cell, suite seed '
           f'{results["settings"]["seed"]}; {results["seconds"]:.0f} s.', '']
  lines += _cost_lines(results.get('cost')) + ['']
  for spec in specs:
    result = results['axes'][spec.name]
    lines += [f'## {spec.name}', '', spec.description + '.' if spec.description else '', '',
              spec.report(result), '']
    for png in result.get('plots', []):
      lines += [f'![{spec.name}]({png})', '']
  return '\n'.join(lines)


def write_report(out_dir: str, results: dict, specs) -> str:
  path = os.path.join(out_dir, 'report.md')
  text = render(results, specs)
  files.write_atomic(path, lambda f: f.write(text.encode()))
  return path
