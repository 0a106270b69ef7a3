"""Fuzz targets (not run in CI; a short run of each is in tests/hardening/test_fuzz_smoke.py)."""
