"""Personal data: find it (detectors with a position and a type), mask it, keep it no longer than
allowed. `default_masker().mask_text(text)` is what every writer of user content calls."""

from ernie_ops.privacy.base import CHECKSUM_TYPES, TYPES, Detector, Finding
from ernie_ops.privacy.masker import (
    NER_NOTE,
    NO_MASK_ENV,
    STRATEGIES,
    Masker,
    Scope,
    default_masker,
    mask_fields,
    masker,
    masking_note,
    masking_on,
)

__all__ = [
    "CHECKSUM_TYPES",
    "NER_NOTE",
    "NO_MASK_ENV",
    "STRATEGIES",
    "TYPES",
    "Detector",
    "Finding",
    "Masker",
    "Scope",
    "default_masker",
    "mask_fields",
    "masker",
    "masking_note",
    "masking_on",
]
