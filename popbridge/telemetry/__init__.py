"""What the bridge tells its operators: Prometheus metrics and the shape of its log lines.

`metrics` holds the prometheus-client objects and the small functions the frontend and the
session call to count what happens; `board` keeps the live sessions the status page shows;
`upstream` times every call a session makes to its mailbox; `logs` formats log records as
text or as JSON lines. Nothing here imports aiohttp: the admin listener (`popbridge.admin`)
serves what this package collects.
"""
