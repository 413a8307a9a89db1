"""Training, evaluation, site calibration and offline prediction for the pneumonia model.

Nothing at run time imports this package; it builds on :mod:`cxr_model` (architecture,
preprocessing, contract) so training and the worker cannot drift apart.
"""
