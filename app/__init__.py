"""The Lookalike HTTP service (FastAPI) and the `lookalike` command line."""
