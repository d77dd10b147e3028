"""Writes tests/data/tfds_tiny: a TFDS dataset 'ddjax_tiny' in the array_record format.

Run once with TensorFlow and tensorflow-datasets installed (preparing encodes the images with
TensorFlow): `python make_tiny.py OUT_DIR`. Image i of class c (names ant, bee, cat) is
uint8 (6, 5, 1) with pixel [r, q] = 64 c + 4 i + r, so a reader can check every decoded pixel
against its label. train: 4 images per class, test: 2.
"""
import sys

import numpy as np
import tensorflow_datasets as tfds


class DdjaxTiny(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(6, 5, 1)),
            'label': tfds.features.ClassLabel(names=['ant', 'bee', 'cat'])}),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(4), 'test': self._generate_examples(2)}

  def _generate_examples(self, per_class):
    for c in range(3):
      for i in range(per_class):
        image = (64 * c + 4 * i + np.arange(6, dtype=np.uint8)[:, None, None]
                 + np.zeros((6, 5, 1), np.uint8)).astype(np.uint8)
        yield f'{c}_{i}', {'image': image, 'label': c}


if __name__ == '__main__':
  DdjaxTiny(data_dir=sys.argv[1], file_format='array_record').download_and_prepare()
