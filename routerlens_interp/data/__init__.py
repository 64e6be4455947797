"""Data set loading: native QA formats, directories of split files and hub names → canonical
:class:`QAExample` lists, with train / dev / test always disjoint (:mod:`.splits`)."""
from .formats import FIELD_SETS, FORMATS, detect_format, record_to_example
from .hub import CONFIQA_COMMIT, CONFIQA_URL, HubDataUnavailable
from .loaders import (HUB_DATASETS, SINGLE_SPLIT_FRACTIONS, TOY_NAMES, HubSpec, accepted_names, default_split,
                      is_directory, is_single_file, load_dataset, read_records, records_to_examples, split_files)
from .splits import DEV_FROM_TRAIN, SPLIT_SALT, check_disjoint, cut, example_key, normalize_split
from .train_dev import TrainDevData, test_split_of, train_dev_data

__all__ = ["load_dataset", "read_records", "records_to_examples", "detect_format", "record_to_example",
           "FORMATS", "FIELD_SETS", "HUB_DATASETS", "TOY_NAMES", "SINGLE_SPLIT_FRACTIONS", "DEV_FROM_TRAIN",
           "SPLIT_SALT", "HubSpec", "HubDataUnavailable", "CONFIQA_URL", "CONFIQA_COMMIT", "accepted_names",
           "check_disjoint", "cut", "example_key", "normalize_split", "split_files", "is_single_file", "is_directory",
           "default_split", "train_dev_data", "TrainDevData", "test_split_of"]
