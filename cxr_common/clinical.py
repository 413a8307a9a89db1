"""The clinical-use statement every output of cxr-triage carries."""

DISCLAIMER = "Clinical decision support, not a diagnosis: a radiologist reads every study."
