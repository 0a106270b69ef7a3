"""The network side: listeners, one object per connection, downstream TLS, throttling.

Owns sockets, TLS handshakes and profiles, deadlines, and the per-address and per-user
limits that hold before a login reaches the upstream. May import `popbridge.pop3`,
`popbridge.session`, `popbridge.config`, `popbridge.errors`, `popbridge.telemetry` (metrics,
the session board) and the standard library;
never a backend, aioimaplib or aiohttp.
"""
