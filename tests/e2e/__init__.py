"""End-to-end tests: the real app driven in headless Chromium (run with `pytest -m e2e tests/e2e`)."""
