"""A small image set stored as an image folder (torchvision's ImageFolder layout), read back.

ddjax writes a run's set this way (`ddjax.runtime.export.export_image_folder`, a workdir's
`distilled_images/`) so that other tools read it unchanged:

    dir/<k zero-padded>_<class name>/<i zero-padded>.png   the images, 8-bit 'L' or 'RGB'
    dir/labels.npy        float32 (n, K): row j is the label of the j-th image in sample order
    dir/labels.csv        path,class,label_0,...,label_{K-1} in the same order
    dir/files.txt         the images' relative paths, one a line, in sample order
    dir/class_names.json  the K class names as ddjax knew them (folder names are sanitised)
    dir/README.txt        how to load it in PyTorch

Sample order is torchvision's (`datasets.folder.make_dataset`): classes in sorted folder order
(class index = position in that order, `class_to_idx`); inside a class folder, the directories of
`sorted(os.walk(...))` and each one's file names sorted. The zero-padded class prefix makes the
sorted order the class order.

`read_set_folder` also reads a plain ImageFolder written by another tool (DD-Ranking, SRe2L / RDED
style: class folders of PNG or JPEG images with any names, no labels file): classes in sorted
folder order, one-hot labels. Hidden folders (names starting with '.') are not classes.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ddjax.data.imagefolder import IMG_EXTENSIONS, channels_of, find_classes, open_image, to_array

LABELS = 'labels.npy'
LABELS_CSV = 'labels.csv'
FILES = 'files.txt'
CLASS_NAMES = 'class_names.json'
README = 'README.txt'


class SetFolderError(ValueError):
  """A set folder that cannot be read: the message names the path and what to do."""


def sample_order(directory: str) -> tuple[list[str], np.ndarray, list[str]]:
  """(relative paths, int32 class indices (n,), class folder names) of the images under
  `directory`, in torchvision ImageFolder's sample order (module docstring).

  Raises SetFolderError when `directory` has no class folders, holds no images, or has a class
  folder without images (torchvision refuses those too).
  """
  folders = find_classes(directory)
  if not folders:
    raise SetFolderError(f'{directory} has no class folders; a set folder holds one folder of '
                         'images per class (torchvision ImageFolder layout: <dir>/<class>/*.png).')
  paths, classes, empty = [], [], []
  for k, folder in enumerate(folders):
    top = os.path.join(directory, folder)
    found = [os.path.relpath(os.path.join(root, name), directory)
             for root, _, names in sorted(os.walk(top, followlinks=True))
             for name in sorted(names) if name.lower().endswith(IMG_EXTENSIONS)]
    if not found:
      empty.append(folder)
    paths += found
    classes += [k] * len(found)
  if not paths:
    raise SetFolderError(f'{directory} holds no images in its class folders (extensions '
                         f'{", ".join(IMG_EXTENSIONS)}); point at the folder that holds the class '
                         'folders.')
  if empty:
    raise SetFolderError(f'class folders {empty} of {directory} hold no images; add images or '
                         'remove those folders.')
  return paths, np.asarray(classes, np.int32), folders


def _read_labels(directory: str, n: int, num_folders: int) -> np.ndarray | None:
  path = os.path.join(directory, LABELS)
  if not os.path.exists(path):
    return None
  y = np.load(path, allow_pickle=False)
  if y.ndim != 2:
    raise SetFolderError(f'{path} has shape {y.shape}; it must be (images, classes).')
  if y.shape[0] != n:
    raise SetFolderError(f'{path} has {y.shape[0]} rows but {directory} holds {n} images; '
                         f'its rows are the labels of the images in sample order (see {FILES}): '
                         'add or remove images or rewrite the labels so they match.')
  if y.shape[1] < num_folders:
    raise SetFolderError(f'{path} has {y.shape[1]} label columns but {directory} has '
                         f'{num_folders} class folders; a label needs a column per class.')
  return y.astype(np.float32)


def _check_file_list(directory: str, paths: list[str]) -> None:
  """When files.txt is there, the images found must be exactly those it lists, in its order."""
  path = os.path.join(directory, FILES)
  if not os.path.exists(path):
    return
  with open(path) as f:
    listed = [line.rstrip('\n') for line in f if line.strip()]
  found = [p.replace(os.sep, '/') for p in paths]
  if listed != found:
    extra, missing = sorted(set(found) - set(listed)), sorted(set(listed) - set(found))
    what = (f'not listed: {extra[:3]}' if extra else '') + ('; ' if extra and missing else '') + (
        f'listed but missing: {missing[:3]}' if missing else '')
    raise SetFolderError(f'the images in {directory} differ from {path} '
                         f'({what or "same files, another order"}); the labels follow {FILES}, so '
                         'restore the images it lists or delete the labels files.')


def _class_names(directory: str, folders: list[str], num_classes: int) -> list[str]:
  path = os.path.join(directory, CLASS_NAMES)
  if not os.path.exists(path):
    return folders + [str(k) for k in range(len(folders), num_classes)]
  with open(path) as f:
    names = json.load(f)
  if not isinstance(names, list) or len(names) != num_classes:
    raise SetFolderError(f'{path} must be a list of the {num_classes} class names; fix or delete '
                         'it (the folder names are used without it).')
  return [str(n) for n in names]


def read_set_folder(path: str) -> dict:
  """The set stored in the image folder `path` (module docstring for the layout).

  Returns a dict:
    x_pixels: float32 (n, H, W, C) in [0, 1], the 8-bit images / 255 in sample order; C = 1 when
      every image is grey, else 3 (RGBA and palette images are converted to RGB).
    y: float32 (n, K) labels: labels.npy when present (as written: soft or learned labels kept),
      else the one-hot rows of the class folders (K = the number of class folders).
    classes: int32 (n,) the class folder index of each image (sorted folder order).
    class_names: K names (class_names.json when present, else the folder names).
    files: the n relative paths, in sample order.

  Raises SetFolderError (a ValueError) for a missing directory, no images, images of different
  sizes, a labels.npy whose row count differs from the number of images or with fewer columns than
  class folders, and images that differ from files.txt; ValueError naming the file for an image
  that cannot be decoded.
  """
  if not os.path.isdir(path):
    raise SetFolderError(f'{path} is not a directory; pass the folder that holds the class '
                         'folders (a workdir\'s distilled_images/).')
  paths, classes, folders = sample_order(path)
  y = _read_labels(path, len(paths), len(folders))
  if y is not None:
    _check_file_list(path, paths)
  else:
    y = np.eye(len(folders), dtype=np.float32)[classes]
  images = [open_image(os.path.join(path, p)) for p in paths]
  sizes = {img.size for img in images}
  if len(sizes) > 1:
    first = images[0].size
    other = next(i for i, img in enumerate(images) if img.size != first)
    raise SetFolderError(f'the images of {path} differ in size: {paths[0]} is {first[0]}x'
                         f'{first[1]}, {paths[other]} is {images[other].size[0]}x'
                         f'{images[other].size[1]} (width x height); a set needs one size, so '
                         'resize them first.')
  channels = 1 if all(channels_of(img) == 1 for img in images) else 3
  w, h = images[0].size
  x = np.stack([to_array(img, (h, w), channels) for img in images]).astype(np.float32) / 255.0
  return {'x_pixels': x, 'y': y, 'classes': classes,
          'class_names': _class_names(path, folders, y.shape[1]),
          'files': [p.replace(os.sep, '/') for p in paths]}
