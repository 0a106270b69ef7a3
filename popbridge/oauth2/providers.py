"""OAuth2 providers: the Google and Microsoft presets, and `[accounts.oauth2.NAME]` tables.

This module owns what the bridge knows about an authorization server: its token endpoint
(RFC 6749 section 3.2), the authorization endpoint for the browser flow (section 3.1), the
device authorization endpoint (RFC 8628 section 3.1), the scope that grants IMAP access, and
our client registration. The presets carry the endpoints the providers publish; a table
named `google`, `microsoft` or `microsoft-graph` (Microsoft's endpoints, Graph's mail scopes),
or with `preset = ...`, starts from them; any other table describes a custom provider.
Endpoints must be https, except on loopback (RFC 6749 3.1, 3.2: TLS is required for both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from popbridge.upstream.settings import TableReader
from popbridge.upstream.tls import is_loopback

PRESETS = ("google", "microsoft", "microsoft-graph")

# Google, "OAuth 2.0 for Mobile & Desktop Apps": loopback redirect with PKCE. Google's
# limited-input (device) flow refuses Gmail scopes (invalid_scope), so no device endpoint.
# access_type=offline asks for a refresh token; prompt=consent asks again on re-authorization,
# or Google returns no new refresh token.
_GOOGLE: dict[str, Any] = {
    "authorize_url": "https://accounts.google.com/o/oauth2/v2/auth",
    "token_url": "https://oauth2.googleapis.com/token",
    "device_url": None,
    "scope": "https://mail.google.com/",
    "authorize_params": {"access_type": "offline", "prompt": "consent"},
    "refresh_with_scope": False,
}
# Microsoft identity platform v2.0 endpoints under a tenant (common, organizations,
# consumers, or a tenant id); offline_access is the scope that yields a refresh token.
_MICROSOFT_BASE = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/"
_MICROSOFT_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
# For the Graph backend: IMAP scopes do not work on Graph; User.Read lets it read /me.
_GRAPH = "https://graph.microsoft.com/"
_GRAPH_SCOPE = f"{_GRAPH}Mail.ReadWrite {_GRAPH}User.Read offline_access"


@dataclass(frozen=True, slots=True)
class Provider:
    """One authorization server and our client registration at it."""

    name: str
    token_url: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    authorize_url: str | None = None
    device_url: str | None = None
    scope: str = ""
    authorize_params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    refresh_with_scope: bool = False  # send `scope` with refresh requests (RFC 6749 6 allows it)


def preset_defaults(preset: str, tenant: str) -> dict[str, Any]:
    """The published endpoints and IMAP scope of a preset."""
    if preset == "google":
        return dict(_GOOGLE)
    base = _MICROSOFT_BASE.format(tenant=tenant)
    return {
        "authorize_url": base + "authorize",
        "token_url": base + "token",
        "device_url": base + "devicecode",
        "scope": _GRAPH_SCOPE if preset == "microsoft-graph" else _MICROSOFT_SCOPE,
        "authorize_params": {},
        # Microsoft documents scope as optional on refresh, but some tenants refuse without it
        "refresh_with_scope": True,
    }


def _endpoint(reader: TableReader, key: str, default: str | None) -> str | None:
    value: str | None = reader.string(key, default)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return value
    raise reader.error(key, "must be an https:// URL (http:// only on loopback)")


def parse_provider(reader: TableReader, name: str) -> Provider:
    """Read one `[accounts.oauth2.NAME]` table; presets fill what it leaves out."""
    default_preset = name if name in PRESETS else "none"
    preset = reader.choice("preset", (*PRESETS, "none"), default_preset)
    base: dict[str, Any] = {"authorize_params": {}, "refresh_with_scope": False}
    if preset != "none":
        tenant = reader.string("tenant", "common") if preset.startswith("microsoft") else ""
        base = preset_defaults(preset, tenant)
    token_url = _endpoint(reader, "token_url", base.get("token_url"))
    if token_url is None:
        raise reader.error("token_url", "is required for a provider without a preset")
    provider = Provider(
        name=name,
        token_url=token_url,
        client_id=reader.string("client_id"),
        client_secret=reader.secret("client_secret"),
        authorize_url=_endpoint(reader, "authorize_url", base.get("authorize_url")),
        device_url=_endpoint(reader, "device_url", base.get("device_url")),
        scope=reader.string("scope", base.get("scope") or None) or "",
        authorize_params=MappingProxyType(dict(base["authorize_params"])),
        refresh_with_scope=reader.boolean("refresh_with_scope", base["refresh_with_scope"]),
    )
    reader.finish()
    return provider
