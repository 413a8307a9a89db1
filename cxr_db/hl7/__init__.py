"""HL7 results to the RIS: every attempt to deliver a study's ORU^R01 (``tables``, ``store``)."""
