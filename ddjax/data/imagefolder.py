"""Image folders in torchvision's ImageFolder layout, read with Pillow.

Layout (the split folder names are `data.train_split` / `data.test_split`):

    root/train/<class>/*.png|jpg|...     root/test/<class>/...     (ImageNette: root/val/...)

or, with `data.test_fraction` > 0, a single `root/<class>/...` whose images are split per class:
in each class (files sorted by name) a fixed permutation (seed 0, the same for every run seed)
puts round(fraction x count) images, at least one, in the test split.

Classes are the subfolder names sorted as torchvision sorts them (plain string order); their index
is the label. Files are those with torchvision's image extensions (case-insensitive), found
recursively under each class folder, sorted by path. Every image is converted to `channels` (1:
Pillow's 'L' grey, 3: 'RGB'; 0: 1 if the first training image is grey, else 3) and brought to
`image_size` x `image_size` by a centred crop to a square and a bilinear resize (ImageOps.fit:
torchvision's Resize + CenterCrop of the dataset-distillation code); 0 keeps the first training
image's height and width and fits every other image to it.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
SPLIT_SEED = 0


def find_classes(directory: str) -> list[str]:
  """The class folder names of `directory`, sorted (torchvision's order)."""
  return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith('.'))


def _image_files(directory: str) -> list[str]:
  out = []
  for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    out += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMG_EXTENSIONS)]
  return sorted(out)


def scan_split(directory: str, classes: Optional[Sequence[str]] = None
               ) -> tuple[list[str], np.ndarray, list[str]]:
  """(files, int32 labels (n,), classes) of one split folder; classes found there unless given.

  Raises ValueError for a split with no class folders, a class folder without images, or (when
  `classes` is given) class folders that differ from them.
  """
  found = find_classes(directory)
  if not found:
    raise ValueError(f'{directory} has no class subfolders; an image folder holds one folder of '
                     'images per class (torchvision ImageFolder layout: split/<class>/*.png).')
  if classes is not None:
    missing = sorted(set(classes) - set(found))
    extra = sorted(set(found) - set(classes))
    if missing or extra:
      raise ValueError(f'{directory} must hold the classes of the training split: '
                       + (f'missing {missing}' if missing else '')
                       + ('; ' if missing and extra else '')
                       + (f'not in training {extra}' if extra else '')
                       + '. Add or remove class folders so both splits have the same classes.')
  classes = list(classes) if classes is not None else found
  files, labels = [], []
  for k, name in enumerate(classes):
    members = _image_files(os.path.join(directory, name))
    if not members:
      raise ValueError(f'class folder {os.path.join(directory, name)} holds no images '
                       f'(extensions {", ".join(IMG_EXTENSIONS)}); add images or remove it.')
    files += members
    labels += [k] * len(members)
  return files, np.asarray(labels, np.int32), classes


def split_by_fraction(labels: np.ndarray, fraction: float, num_classes: int,
                      seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) int64 positions: per class, round(fraction x count) (>= 1) to test, chosen by
  a permutation seeded with (seed, class). Raises ValueError if a class would keep no training
  image."""
  train, test = [], []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    k = max(1, int(round(fraction * len(members))))
    if k >= len(members):
      raise ValueError(f'class {c} has {len(members)} images: data.test_fraction={fraction} '
                       'leaves none for training; add images or lower the fraction.')
    perm = np.random.default_rng([seed, c]).permutation(members)
    test.append(np.sort(perm[:k]))
    train.append(np.sort(perm[k:]))
  return np.concatenate(train), np.concatenate(test)


def open_image(path: str) -> Image.Image:
  """The decoded image at `path`; ValueError naming the file if Pillow cannot read it."""
  try:
    with Image.open(path) as img:
      img.load()
      return img.copy() if img.mode not in ('P', 'PA') else img.convert('RGBA')
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise ValueError(f'cannot read image {path}: {e}. Replace or delete the file.') from e


def channels_of(img: Image.Image) -> int:
  """1 for grey images (modes L, LA, I, F, 1), else 3."""
  return 1 if img.mode in ('1', 'L', 'LA', 'I', 'I;16', 'F') else 3


def to_array(img: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
  """img -> uint8 (H, W, channels): converted to 'L' or 'RGB', centre-cropped to the aspect of
  `size` (H, W) and resized bilinearly (Pillow's ImageOps.fit)."""
  if img.mode in ('I', 'I;16', 'F'):     # 16-bit / float grey: scale to 8 bits by its range
    a = np.asarray(img, np.float64)
    lo, hi = a.min(), a.max()
    img = Image.fromarray(((a - lo) / (hi - lo) * 255 if hi > lo else a * 0).astype(np.uint8))
  img = img.convert('L' if channels == 1 else 'RGB')
  h, w = size
  if img.size != (w, h):
    img = ImageOps.fit(img, (w, h), method=Image.BILINEAR)
  a = np.asarray(img, np.uint8)
  return a[..., None] if channels == 1 else a


class ImageFileRows:
  """A row source over image files: `rows[idx]` decodes those files to uint8 (b, H, W, C).

  Decoding runs on a few threads (Pillow releases the GIL while decoding). Used whole by the
  image-folder loader and batch by batch when streaming (`ddjax.data.streaming.Rows`).
  """

  def __init__(self, files: Sequence[str], size: tuple[int, int], channels: int,
               threads: int = 4):
    self.files = list(files)
    self.size, self.channels, self.threads = tuple(size), int(channels), threads
    self.shape = (len(self.files),) + self.size + (self.channels,)
    self.dtype = np.dtype(np.uint8)

  def _one(self, i: int) -> np.ndarray:
    return to_array(open_image(self.files[i]), self.size, self.channels)

  def __getitem__(self, idx) -> np.ndarray:
    idx = np.atleast_1d(np.asarray(idx, np.int64))
    if len(idx) <= 2 or self.threads <= 1:
      rows = [self._one(int(i)) for i in idx]
    else:
      with ThreadPoolExecutor(self.threads) as pool:
        rows = list(pool.map(self._one, (int(i) for i in idx)))
    return np.stack(rows) if rows else np.zeros((0,) + self.shape[1:], np.uint8)


def scan_image_folder(root: str, train_split: str = 'train', test_split: str = 'test',
                      test_fraction: float = 0.0, image_size: int = 0, channels: int = 0
                      ) -> tuple[ImageFileRows, np.ndarray, ImageFileRows, np.ndarray, list[str]]:
  """The image folder at `root` as (train rows, train labels, test rows, test labels, classes).

  Nothing is decoded but the first training image (which fixes size / channels when those are
  0). Raises ValueError for an empty folder, mismatched class folders, a missing split folder,
  or an unreadable first image; later unreadable images raise when read, naming the file.
  """
  if test_fraction > 0:
    files, labels, classes = scan_split(root)
    tr, te = split_by_fraction(labels, test_fraction, len(classes))
    split = ([files[i] for i in tr], labels[tr]), ([files[i] for i in te], labels[te])
  else:
    where = {s: os.path.join(root, s) for s in (train_split, test_split)}
    absent = [p for p in where.values() if not os.path.isdir(p)]
    if absent:
      raise ValueError(f'image folder {root} lacks {" and ".join(absent)}; expected '
                       f'{root}/{train_split}/<class>/* and {root}/{test_split}/<class>/* '
                       f'(data.train_split / data.test_split name them), or class folders '
                       'directly under the root with data.test_fraction > 0.')
    tr_files, tr_labels, classes = scan_split(where[train_split])
    te_files, te_labels, _ = scan_split(where[test_split], classes)
    split = (tr_files, tr_labels), (te_files, te_labels)
  (tr_files, tr_labels), (te_files, te_labels) = split
  first = open_image(tr_files[0])
  size = (image_size, image_size) if image_size else (first.height, first.width)
  channels = channels or channels_of(first)
  return (ImageFileRows(tr_files, size, channels), tr_labels,
          ImageFileRows(te_files, size, channels), te_labels, classes)


def is_image_folder(path: str, train_split: str, test_fraction: float) -> bool:
  """Whether `path` looks like an image folder: class folders under root/train_split, or under
  root itself when test_fraction > 0."""
  base = path if test_fraction > 0 else os.path.join(path, train_split)
  return os.path.isdir(base) and bool(find_classes(base))
