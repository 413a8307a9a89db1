"""cxr-triage: the command-line entry point and process orchestration (demo, up).

Clinical decision support, not diagnosis.
"""
