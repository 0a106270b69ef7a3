"""Store tests: one contract suite (contract.py) run against SQLite and PostgreSQL."""
