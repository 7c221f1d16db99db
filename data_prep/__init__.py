"""Data preparation for reskd_jax: video data sets -> sharded TFRecords (reskd_jax.data.records).

  python -m data_prep --help

Public API:
  convert_format(fmt, annotations, source, out, split, classes=None, options=ConvertOptions(), ...)
  convert(annotations: Annotations, out_dir, split, options=ConvertOptions(), ...)
  read_annotations(fmt, annotations, source, split, classes=None) -> Annotations
  prepare_demo(out_dir, num_train=600, num_test=400, seed=0, workers=None) -> records dir
"""

from data_prep.annotations import FORMATS, read_annotations
from data_prep.converter import convert, convert_format
from data_prep.demo_data import prepare_demo
from data_prep.encode import ConvertOptions
from data_prep.items import Annotations, ConversionError, Item, ItemError, Skipped


__all__ = ["FORMATS", "read_annotations", "convert", "convert_format", "ConvertOptions",
           "Annotations", "ConversionError", "Item", "ItemError", "Skipped", "prepare_demo"]
