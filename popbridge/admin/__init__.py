"""The operators' HTTP listener: probes, Prometheus metrics and a status page (aiohttp).

`server` builds the aiohttp application and its limits (GET and HEAD only, small requests,
an optional bearer token for everything but `/healthz`); `health` runs the background
probes whose cached results `/readyz` reports; `status` gathers what the status page shows
and `page` renders it as HTML. The counting itself lives in `popbridge.telemetry`, which
the sessions use without importing aiohttp.
"""

from popbridge.admin.server import AdminContext, AdminServer

__all__ = ["AdminContext", "AdminServer"]
