"""Data: dataset sources, preprocessing (standardize, ZCA) and class-balanced sampling.

Sources: `sources` (registry, search order, `load_dataset`), one reader per format (`idx`,
`cifar`, `npz`, `npy`, `imagefolder`, `tfds_source`), and `dataset` (the `Dataset` they return);
`set_folder`: a small labelled set stored as an image folder (an exported set), read back;
`streaming`: the `Rows` view a training set larger than memory is read through; `prepared`: the
preprocessed arrays every run stage works on.
"""
from ddjax.data.cifar import load_cifar_dir, load_cifar_tar
from ddjax.data.dataset import Dataset
from ddjax.data.idx import read_idx, write_idx
from ddjax.data.imagefolder import scan_image_folder
from ddjax.data.npy import load_npy_dir, write_npy
from ddjax.data.npz import load_npz
from ddjax.data.set_folder import SetFolderError, read_set_folder
from ddjax.data.streaming import InMemoryRequiredError, Rows, channel_moments, is_streamed
from ddjax.data.tfds_source import load_tfds
from ddjax.data.preprocess import (
    Preprocessor,
    apply_preprocessor,
    clip_to_pixel_range,
    default_preprocessing,
    fit_preprocessor,
    invert_preprocessor,
    preprocessor_from_dict,
    preprocessor_to_dict,
)
from ddjax.data.prepared import PreparedData, prepare
from ddjax.data.sampling import (
    centered_one_hot,
    check_ipc,
    class_balanced_indices,
    init_synthetic,
    initial_labels,
    lift_labels,
    one_hot,
    real_subset,
)
from ddjax.data.sources import (
    DATASETS,
    DatasetNotFoundError,
    candidate_paths,
    load_dataset,
    locate_dataset,
    source_options,
)

__all__ = [
    'PreparedData', 'prepare',
    'DATASETS', 'Dataset', 'DatasetNotFoundError', 'Preprocessor', 'apply_preprocessor',
    'candidate_paths', 'centered_one_hot', 'check_ipc', 'class_balanced_indices',
    'clip_to_pixel_range', 'initial_labels', 'lift_labels',
    'default_preprocessing', 'fit_preprocessor', 'init_synthetic', 'invert_preprocessor',
    'load_cifar_dir', 'load_cifar_tar', 'load_dataset', 'load_npz', 'locate_dataset', 'one_hot',
    'preprocessor_from_dict', 'preprocessor_to_dict', 'read_idx', 'real_subset', 'write_idx',
    'InMemoryRequiredError', 'Rows', 'channel_moments', 'is_streamed', 'load_npy_dir', 'load_tfds',
    'scan_image_folder', 'source_options', 'write_npy', 'SetFolderError', 'read_set_folder',
]
