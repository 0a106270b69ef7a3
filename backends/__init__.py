"""Backends: one module per upstream kind, each implementing popbridge.contract.Backend."""
