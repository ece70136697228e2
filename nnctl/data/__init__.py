"""nnctl's data layer: built-in datasets, file loaders, seeded splits, standardization, batching.

Pure NumPy like the engine: nothing here reads YAML, draws on a terminal or prints.
"""
from nnctl.data.batching import iterate_batches
from nnctl.data.builtin import DATASETS, BuiltinDataset, datasets_dir
from nnctl.data.dataset import PARAMS_DATA, Dataset, load_dataset
from nnctl.data.preprocess import Preprocessor, TableEncoder, load_features
from nnctl.data.splits import Split
from nnctl.data.standardize import Standardizer
from nnctl.data.targets import encode_labels, encode_targets, infer_task

__all__ = [
    "DATASETS",
    "PARAMS_DATA",
    "Preprocessor",
    "TableEncoder",
    "BuiltinDataset",
    "Dataset",
    "Split",
    "Standardizer",
    "datasets_dir",
    "encode_labels",
    "encode_targets",
    "infer_task",
    "iterate_batches",
    "load_dataset",
    "load_features",
]
