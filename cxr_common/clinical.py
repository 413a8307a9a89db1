"""The clinical-use statement every output of cxr-triage carries: the one text, used by
the SR and SC, the CLI, the model's files and plots, and every web page."""

DISCLAIMER = "Clinical decision support, not a diagnosis: a radiologist reads every study."

#: What a heatmap means and what it does not (model card, study page).
HEATMAP_NOTE = (
    "The heatmap (Grad-CAM) shows which parts of the image pushed the model's score towards "
    "pneumonia. It is drawn at full strength only for flagged studies; for an unflagged study it "
    "is faded in proportion to the score, so a confident negative shows almost nothing. It is "
    "not a segmentation and not a finding: it does not outline the pneumonia, a hot area is not "
    "necessarily abnormal, and a cold area is not necessarily normal. The model can look at the "
    "wrong things (text, markers, tubes, the edge of the film); where the map sits outside the "
    "lungs, trust the score less. A radiologist reads every study."
)
