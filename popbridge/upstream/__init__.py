"""What a backend may use from the core besides the contract: upstream TLS and its read
sizing, config tables, the shared byte budget and the TOP line counter.

Backends import `popbridge.contract`, `popbridge.errors` and this package, nothing else of
the core (tests/test_layout.py enforces it). It imports only the standard library and
`popbridge.errors`.
"""
