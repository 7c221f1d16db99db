"""Annotation readers: one module per format, each with
`read(annotations, source, split, classes=None) -> Annotations`."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

from data_prep.annotations import activitynet, fcvid, folder, kinetics, minik, rawframes, sthv2
from data_prep.items import Annotations, ConversionError

READERS: Dict[str, Callable[..., Annotations]] = {
    "kinetics": kinetics.read,
    "minik": minik.read,
    "activitynet": activitynet.read,
    "fcvid": fcvid.read,
    "sthv2": sthv2.read,
    "folder": folder.read,
    "rawframes": rawframes.read,
}

FORMATS = tuple(READERS)


def read_annotations(fmt: str, annotations: Optional[str], source: str, split: str,
                     classes: Optional[Sequence[str]] = None) -> Annotations:
  """Reads one split's annotations in format `fmt` (one of FORMATS)."""
  if fmt not in READERS:
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
  if fmt != "folder" and not annotations:
    raise ConversionError(f"format {fmt!r} needs an annotation file (--annotations=...)")
  return READERS[fmt](annotations, source, split, classes)
