"""What a backend may use from the core besides the contract: upstream TLS, config tables,
the shared byte budget, the TOP line counter, and the HTTP backends' deadlines (`http`).

Backends import `popbridge.contract`, `popbridge.errors` and this package, nothing else of
the core (tests/test_layout.py enforces it). It imports only the standard library,
`popbridge.errors` and, in `http`, aiohttp (a dependency of the core already).
"""
