"""The POP3 protocol without I/O: commands, replies, the state table, the wire rules, SASL.

Owns RFC 1939 (with RFC 2449 CAPA and RESP-CODES, RFC 5034 SASL, RFC 2595 STLS): bytes in,
command events out, replies in, bytes out. May import only the standard library's pure
modules and `popbridge.errors`; never asyncio, ssl, socket, a backend or an HTTP library
(tests/test_layout.py enforces it), so every rule here is testable without a network.
"""
