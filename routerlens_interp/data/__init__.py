"""Data set loading: native QA formats and hub names → canonical :class:`QAExample` lists."""
from .formats import FIELD_SETS, FORMATS, detect_format, record_to_example
from .loaders import (HUB_DATASETS, SINGLE_SPLIT_FRACTIONS, TOY_NAMES, HubSpec, accepted_names, load_dataset,
                      read_records, records_to_examples)

__all__ = ["load_dataset", "read_records", "records_to_examples", "detect_format", "record_to_example",
           "FORMATS", "FIELD_SETS", "HUB_DATASETS", "TOY_NAMES", "SINGLE_SPLIT_FRACTIONS", "HubSpec",
           "accepted_names"]
