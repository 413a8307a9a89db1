"""The clinical-use statement every output of cxr-triage carries: the one text, used by
the SR and SC, the CLI, the model's files and plots, and every web page."""

DISCLAIMER = "Clinical decision support, not a diagnosis: a radiologist reads every study."


def heatmap_note(finding: str) -> str:
    """What a heatmap means and what it does not, for a model that reports ``finding``
    (its display text, :attr:`cxr_common.model_files.ModelFinding.display`)."""
    return (
        f"The heatmap (Grad-CAM, warmer = more influence) shows which parts of the image "
        f"pushed the model's {finding} score up. It is drawn at full strength only for flagged "
        "studies; for an unflagged study it is faded in proportion to the score, so a "
        "confident negative shows almost nothing. It is not a segmentation and not a finding: "
        "it outlines no lesion, a hot area is not necessarily abnormal, and a cold area is not "
        "necessarily normal. The model can look at the wrong things (text, markers, tubes, the "
        "edge of the film); where the map sits outside the lungs, trust the score less."
    )
