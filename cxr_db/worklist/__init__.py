"""The worklist: every read the worklist page, the CLI and the JSON API make of studies."""
