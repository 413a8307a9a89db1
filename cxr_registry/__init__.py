"""Model registration shared by ``migrate``, the worker and ``model register`` (see
``registration``)."""

from cxr_registry.registration import (
    REFERENCE_FILE,
    ensure_configured_model,
    read_image_check,
    read_model_folder,
)

__all__ = ["REFERENCE_FILE", "ensure_configured_model", "read_image_check", "read_model_folder"]
