"""What a run leaves in its workdir: the distilled set, pictures of it, results.

distilled.npz   x (n,H,W,C) in the model's input space, y (n,K) (learned) labels, classes (n,),
                x_pixels (n,H,W,C) in [0,1] pixel space, class_names, and the preprocessing
                (prefix 'pre_') needed to use x elsewhere (ddjax.data.preprocessor_from_dict).
distilled.png   grid of the images in pixel space, one column per class, each headed by its class
                name (written bottom to top above the column); when the labels are soft or
                learned, each image has a caption below it: its top label and that label's weight
                (`label_captions`).
distilled_images/  the set in pixel space as a torchvision ImageFolder tree of 8-bit PNGs with its
                labels (`export_image_folder`; read back by ddjax.data.read_set_folder), for tools
                that read image folders (PyTorch training, DD-Ranking).
curve.png       the distillation loss against steps (from metrics.jsonl).
results.json    method, dataset, ipc, distill.*, cost.*, eval.*, krr_eval.*.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ddjax.data import invert_preprocessor, preprocessor_to_dict
from ddjax.data import set_folder
from ddjax.infra import files


def image_grid(x_pixels: np.ndarray, classes: np.ndarray, num_classes: int, pad: int = 2,
               scale: int = 2) -> np.ndarray:
  """(n,H,W,C) images in [0,1] -> (rows*(H+pad)+pad, K*(W+pad)+pad, 3) uint8 grid.

  One column per class (class 0 on the left), the class's images top to bottom (rows = the
  largest number of images of a class). Each image gets its own min-max contrast stretch, since
  learned images leave [0,1].
  """
  n, h, w, c = x_pixels.shape
  per_class = [np.flatnonzero(classes == k) for k in range(num_classes)]
  rows = max(1, max(len(p) for p in per_class))
  grid = np.ones((rows * (h + pad) + pad, num_classes * (w + pad) + pad, 3), np.float32)
  for col, idx in enumerate(per_class):
    for r, i in enumerate(idx):
      img = x_pixels[i]
      lo, hi = float(img.min()), float(img.max())
      img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
      img = np.repeat(img, 3, axis=-1) if c == 1 else img[..., :3]
      y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
      grid[y0:y0 + h, x0:x0 + w] = img
  grid = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
  return np.kron(grid, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else grid


def with_class_names(grid: np.ndarray, class_names, column_width: int, pad: int = 4) -> np.ndarray:
  """grid (H, W, 3) uint8 with one column of `column_width` pixels per class (after a left
  margin of (W - K * column_width) pixels) -> (header + H, W, 3): each class name written
  bottom to top above its column (PIL's default font), so long names need no truncation."""
  font = ImageFont.load_default()
  names = [str(n) for n in class_names]
  sizes = [font.getbbox(n) for n in names]
  text_w = max((b[2] - b[0] for b in sizes), default=0)
  text_h = max((b[3] - b[1] for b in sizes), default=0)
  header = np.full((text_w + 2 * pad, grid.shape[1], 3), 255, np.uint8)
  margin = grid.shape[1] - len(names) * column_width
  for k, (name, box) in enumerate(zip(names, sizes)):
    label = Image.new('L', (text_w, text_h + 2), 255)
    ImageDraw.Draw(label).text((-box[0], 1 - box[1]), name, fill=0, font=font)
    rotated = np.asarray(label.rotate(90, expand=True))          # (text_w, text_h + 2)
    h, w = rotated.shape
    x0 = margin // 2 + k * column_width + max(0, (column_width - w) // 2)
    w = min(w, header.shape[1] - x0)
    header[pad:pad + h, x0:x0 + w] = rotated[:, :w, None]
  return np.concatenate([header, grid], axis=0)


def _hard_labels(classes: np.ndarray, num_classes: int) -> list[np.ndarray]:
  """The label rows a set starts from: one-hot and FRePo's centred one-hot, (n, K) each."""
  hot = np.eye(num_classes, dtype=np.float64)[classes]
  return [hot, (hot - 1.0 / num_classes) / np.sqrt(num_classes / 10.0)]


def label_captions(y: np.ndarray, classes: np.ndarray, class_names,
                   atol: float = 1e-6) -> list[str] | None:
  """Each image's top label and its weight, e.g. 'T-shirt/top 0.83'; None for hard labels.

  Args:
    y: (n, K) the set's labels as stored (soft, learned or hard).
    classes: (n,) the class each image belongs to (its column in the grid).
    class_names: K names.
  Returns:
    n captions '<name of argmax y_i> <y_i[argmax]:.2f>' (the weight on the label's own scale:
    a probability for soft labels, FRePo's centred target, DATM's logit), or None when every row
    is still the one-hot or centred one-hot label of its class (nothing to show).
  """
  y = np.asarray(y, np.float64)
  classes = np.asarray(classes)
  if y.ndim != 2 or y.shape[0] != classes.shape[0]:
    raise ValueError(f'labels {y.shape} do not match {classes.shape[0]} images')
  if any(np.allclose(y, h, atol=atol) for h in _hard_labels(classes, y.shape[1])):
    return None
  top = y.argmax(-1)
  return [f'{class_names[t]} {y[i, t]:.2f}' for i, t in enumerate(top)]


def _fit_text(text: str, font, width: int) -> str:
  """`text` cut (with a trailing '.') to at most `width` pixels in `font`."""
  if font.getlength(text) <= width:
    return text
  while text and font.getlength(text + '.') > width:
    text = text[:-1]
  return text + '.'


def with_captions(grid: np.ndarray, captions, classes: np.ndarray, num_classes: int,
                  image_hw: tuple[int, int], pad: int = 2, scale: int = 2) -> np.ndarray:
  """`image_grid`'s grid (same pad and scale) with a caption band under every row of images:
  each image's caption in two lines, the name (cut to the image's width) over the weight
  (the caption's last word). Returns (H + rows * band, W, 3) uint8."""
  font = ImageFont.load_default()
  h, w = image_hw
  cell_h, cell_w = (h + pad) * scale, (w + pad) * scale
  line_h = max(font.getbbox('Ag')[3], 8) + 1
  per_class = [np.flatnonzero(np.asarray(classes) == k) for k in range(num_classes)]
  rows = max(1, max(len(p) for p in per_class))
  parts = [grid[:pad * scale]]
  for r in range(rows):
    y0 = pad * scale + r * cell_h
    parts.append(grid[y0:y0 + cell_h])
    band = Image.new('RGB', (grid.shape[1], 2 * line_h + 2), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for col, idx in enumerate(per_class):
      if r < len(idx):
        name, _, weight = str(captions[idx[r]]).rpartition(' ')
        x0 = pad * scale + col * cell_w
        for line, text in enumerate((name, weight)):
          text = _fit_text(text, font, w * scale)
          dx = max(0, (w * scale - int(font.getlength(text))) // 2)
          draw.text((x0 + dx, line * line_h), text, fill=(0, 0, 0), font=font)
    parts.append(np.asarray(band, np.uint8))
  return np.concatenate(parts, axis=0)


def distilled_image(x_pixels: np.ndarray, y: np.ndarray, classes: np.ndarray,
                    class_names) -> np.ndarray:
  """The picture of distilled.png (and of TensorBoard's distill/images): `image_grid` at scale 2,
  captions when the labels are soft or learned, class names above the columns; (H, W, 3) uint8."""
  classes = np.asarray(classes)
  h, w = x_pixels.shape[1:3]
  grid = image_grid(x_pixels, classes, len(class_names), pad=2, scale=2)
  captions = label_captions(y, classes, class_names)
  if captions is not None:
    grid = with_captions(grid, captions, classes, len(class_names), (h, w), pad=2, scale=2)
  return with_class_names(grid, class_names, column_width=2 * (w + 2))


def state_image(param, classes: np.ndarray, preprocessor, class_names, state) -> np.ndarray:
  """`distilled_image` of a run state's synthetic set (decoded by the set's parameterisation
  `param`, in pixel space), read to this host first so that one process can draw it alone.
  classes: (n,) of the decoded set."""
  syn = jax.device_get(state.syn)
  decoded = jax.device_get(param.decode({k: jnp.asarray(v) for k, v in syn.items()}))
  x_pixels = np.asarray(invert_preprocessor(preprocessor, np.asarray(decoded['x'])), np.float32)
  return distilled_image(x_pixels, np.asarray(decoded['y']), classes, class_names)


def save_png(path: str, array: np.ndarray) -> None:
  files.write_atomic(path, lambda f: Image.fromarray(array).save(f, format='PNG'))


def export_distilled(workdir: str, syn: dict, classes: np.ndarray, preprocessor,
                     class_names) -> dict:
  """Write distilled.npz (x, y, classes, x_pixels, class_names, the preprocessing as pre_*, and
  every further learned entry of the set under its own name: MTT's syn_lr, RFAD's log_temp) and
  distilled.png; returns the paths."""
  x = np.asarray(syn['x'], np.float32)
  y = np.asarray(syn['y'], np.float32)
  x_pixels = np.asarray(invert_preprocessor(preprocessor, x), np.float32)
  npz = os.path.join(workdir, 'distilled.npz')
  learned = {k: np.asarray(v) for k, v in syn.items() if k not in ('x', 'y')}
  files.write_npz(npz, x=x, y=y, classes=np.asarray(classes, np.int32), x_pixels=x_pixels,
                  class_names=np.asarray(class_names), **learned,
                  **preprocessor_to_dict(preprocessor, 'pre_'))
  png = os.path.join(workdir, 'distilled.png')
  save_png(png, distilled_image(x_pixels, y, classes, class_names))
  folder = export_image_folder(os.path.join(workdir, 'distilled_images'), x_pixels, y, classes,
                               class_names)
  return {'npz': npz, 'png': png, 'images': folder['directory']}


def class_folder_names(class_names) -> list[str]:
  """'<k>_<name>' for each class k: k zero-padded to the width of the largest index, so that the
  sorted folder names (torchvision's class order) are the class order; the name with every run of
  characters other than letters, digits, '.', '_', '-' replaced by '_', cut to 64 characters."""
  width = len(str(max(len(class_names) - 1, 0)))
  out = []
  for k, name in enumerate(class_names):
    safe = re.sub(r'[^A-Za-z0-9._-]+', '_', str(name)).strip('._')[:64] or 'class'
    out.append(f'{k:0{width}d}_{safe}')
  return out


README_TEXT = """\
A labelled image set in torchvision's ImageFolder layout, written by ddjax.

  <class index>_<class name>/<image index>.png   8-bit images ('L' grey or 'RGB'), pixel values
                                                 in [0, 1] stored as round(255 * value)
  labels.npy         float32 ({n}, {k}): row i is the label of the i-th image in ImageFolder's
                     sample order (files.txt); soft or learned labels are kept as they are
  labels.csv         the same labels as text: path,class,label_0,...
  files.txt          the image paths in that order
  class_names.json   the class names (folder names are shortened to safe characters)

The sorted class folders are in class order, so ImageFolder's class_to_idx gives ddjax's class
indices. In PyTorch:

  import numpy as np, torch
  from torchvision import datasets, transforms
  ds = datasets.ImageFolder('{name}', transform=transforms.ToTensor())
  labels = torch.from_numpy(np.load('{name}/labels.npy'))   # labels[i] belongs to ds.samples[i]
  x = torch.stack([ds[i][0] for i in range(len(ds))])       # (n, C, H, W) in [0, 1]

ImageFolder's default loader converts every image to RGB; for grey sets pass
loader=lambda p: PIL.Image.open(p).convert('L'). In ddjax: ddjax.data.read_set_folder('{name}').

The images are 8-bit, so pixel values are quantised: each differs from the set's value (clipped
to [0, 1]) by at most 1/510. They are in pixel space: apply the preprocessing the set was learned
with (distilled.npz's pre_* entries in a ddjax workdir) before feeding a model trained with it.
"""


def export_image_folder(directory: str, x_pixels: np.ndarray, y: np.ndarray,
                        classes: np.ndarray, class_names) -> dict:
  """Write a set as an ImageFolder tree with its labels (layout: `ddjax.data.set_folder`).

  Args:
    directory: the folder to write; replaced whole (`ddjax.infra.files.replace_dir`) when it
      holds a previous export, refused when it holds anything else.
    x_pixels: (n, H, W, C) float images in pixel space, C = 1 (saved as 'L') or 3 ('RGB');
      clipped to [0, 1] and stored as uint8 round(255 x), so read back within 1/510.
    y: (n, K) labels (hard, soft or learned), saved as float32 unchanged.
    classes: (n,) int class of each image, in [0, len(class_names)).
    class_names: the names of the classes.
  Image i goes to '<class folder>/<i zero-padded>.png' (`class_folder_names`); labels.npy,
  labels.csv and files.txt list the images in torchvision's sample order (class folders sorted,
  file names sorted in each), which is (class, i) order.
  Returns {'directory', 'labels', 'labels_csv', 'files', 'class_names', 'readme'}: the paths.
  """
  x_pixels = np.asarray(x_pixels)
  y = np.asarray(y, np.float32)
  classes = np.asarray(classes)
  if x_pixels.ndim != 4 or x_pixels.shape[-1] not in (1, 3):
    raise ValueError(f'x_pixels has shape {x_pixels.shape}; an image folder takes (n, H, W, C) '
                     'with C = 1 (grey) or 3 (RGB).')
  n = len(x_pixels)
  if y.ndim != 2 or len(y) != n or classes.shape != (n,):
    raise ValueError(f'labels {y.shape} and classes {classes.shape} must have one row per image '
                     f'({n}).')
  if n and (classes.min() < 0 or classes.max() >= len(class_names)):
    raise ValueError(f'classes must lie in [0, {len(class_names)}) (one per class name), got '
                     f'{classes.min()}..{classes.max()}.')
  bad = int(np.sum(~np.isfinite(x_pixels)))
  if bad:
    raise ValueError(f'x_pixels has {bad} non-finite values; a diverged set cannot be exported '
                     'as images.')
  pixels = (np.clip(x_pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8)
  folders = class_folder_names(class_names)
  width = len(str(max(n - 1, 0)))
  order = sorted(range(n), key=lambda i: (int(classes[i]), i))    # = the sorted paths
  rel = [f'{folders[classes[i]]}/{i:0{width}d}.png' for i in order]
  name = os.path.basename(os.path.normpath(directory))

  def write(tmp: str) -> None:
    for i, path in zip(order, rel):
      image = Image.fromarray(pixels[i, ..., 0] if pixels.shape[-1] == 1 else pixels[i])  # L, RGB
      files.write_atomic(os.path.join(tmp, path),
                         lambda f, image=image: image.save(f, format='PNG'))
    files.write_atomic(os.path.join(tmp, set_folder.LABELS), lambda f: np.save(f, y[order]))
    table = io.StringIO()
    out = csv.writer(table, lineterminator='\n')
    out.writerow(['path', 'class'] + [f'label_{k}' for k in range(y.shape[1])])
    for i, path in zip(order, rel):
      out.writerow([path, int(classes[i])] + [f'{v:.9g}' for v in y[i]])
    _write_text(os.path.join(tmp, set_folder.LABELS_CSV), table.getvalue())
    _write_text(os.path.join(tmp, set_folder.CLASS_NAMES),
                json.dumps([str(c) for c in class_names], indent=1) + '\n')
    _write_text(os.path.join(tmp, set_folder.README),
                README_TEXT.format(n=n, k=y.shape[1], name=name))
    _write_text(os.path.join(tmp, set_folder.FILES), ''.join(p + '\n' for p in rel))  # last

  files.replace_dir(directory, write,
                    is_ours=lambda d: os.path.exists(os.path.join(d, set_folder.FILES)))
  join = lambda f: os.path.join(directory, f)
  return {'directory': directory, 'labels': join(set_folder.LABELS),
          'labels_csv': join(set_folder.LABELS_CSV), 'files': join(set_folder.FILES),
          'class_names': join(set_folder.CLASS_NAMES), 'readme': join(set_folder.README)}


def _write_text(path: str, text: str) -> None:
  files.write_atomic(path, lambda f: f.write(text.encode()))


def plot_curve(workdir: str, title: str) -> str | None:
  """curve.png of loss / meta_loss against step from metrics.jsonl (None if nothing logged)."""
  records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  if not records:
    return None
  from matplotlib.figure import Figure   # not pyplot: a notebook's inline backend stays as it is
  steps = [r['step'] for r in records]
  fig = Figure(figsize=(6, 3.5), dpi=100)
  ax = fig.subplots()
  for key in ('loss', 'meta_loss'):
    if key in records[0]:
      ax.plot(steps, [r[key] for r in records], label=key)
  ax.set_xlabel('step'); ax.set_ylabel('meta-loss'); ax.set_yscale('log')
  ax.set_title(title); ax.legend(); fig.tight_layout()
  path = os.path.join(workdir, 'curve.png')
  files.write_atomic(path, lambda f: fig.savefig(f, format='png'))
  return path
