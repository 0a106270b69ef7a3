"""Backend tests: one contract suite (contract.py) run against every backend."""
