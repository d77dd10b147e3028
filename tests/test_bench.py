"""`ddjax.bench`: every set made and judged, one ranked table with the random subset as a row."""
import json
import os

import pytest

from ddjax import bench


def test_the_leaderboard_ranks_every_set_beside_the_random_subset(tiny_npz, tmp_path):
  run = {'data.name': 'npz', 'data.dir': tiny_npz, 'model.width': '8', 'model.depth': '2',
         'eval.model.width': '8', 'eval.model.depth': '2', 'distill.steps': '3',
         'distill.batch_size': '32', 'eval.protocol': 'dc', 'distill.batch_per_class': '8'}
  suite = {'axes': 'accuracy,robust_scores', 'num_models': '1', 'max_steps': '10',
           'robust_scores.ars': 'false',
           'robust_scores.full_data_epochs': '20', 'cache_dir': str(tmp_path / 'cache')}
  table = bench.bench(['dm'], [1, 2], str(tmp_path / 'b'), 'quick', run, suite)
  assert set(table) == {'1', '2'}
  for ipc, rows in table.items():
    assert [r['method'] for r in rows].count('random_subset') == 1 and len(rows) == 2
    assert [r['rank'] for r in rows] == [1, 2]
    assert rows[0]['lrs'] >= rows[1]['lrs']                     # ranked by LRS
    assert all(0 <= r['lrs'] <= 1 and r['make_seconds'] > 0 for r in rows)
  saved = json.loads((tmp_path / 'b' / 'leaderboard.json').read_text())
  assert saved == json.loads(json.dumps(table))
  text = (tmp_path / 'b' / 'leaderboard.md').read_text()
  assert '### IPC 2' in text and 'random_subset' in text and 'LRS' in text
  assert os.path.exists(tmp_path / 'b' / 'leaderboard.png')


def test_a_bad_run_override_names_the_key(tmp_path):
  with pytest.raises(ValueError, match='distill.stepz'):
    bench.bench(['dm'], [1], str(tmp_path / 'b'), 'quick', {'distill.stepz': '3'}, {})
