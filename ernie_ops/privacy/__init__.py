"""Personal data: find it (detectors with a position and a type), mask it, keep it no longer than
allowed. `default_masker().mask_text(text)` is what every writer of user content calls."""

from ernie_ops.privacy.base import CHECKSUM_TYPES, TYPES, Detector, Finding
from ernie_ops.privacy.masker import NER_NOTE, STRATEGIES, Masker, Scope, default_masker, masker

__all__ = [
    "CHECKSUM_TYPES",
    "NER_NOTE",
    "STRATEGIES",
    "TYPES",
    "Detector",
    "Finding",
    "Masker",
    "Scope",
    "default_masker",
    "masker",
]
