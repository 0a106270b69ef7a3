"""OAuth2 for upstream mailboxes: providers, token requests, the token cache and the flows.

This package owns everything the bridge does as an OAuth2 client (RFC 6749) of the upstream's
authorization server, so that mapped accounts can log in to IMAP with a bearer token
(`AUTHENTICATE XOAUTH2`, the mechanism Google and Microsoft document; RFC 7628 standardised
its successor OAUTHBEARER) instead of a password: `providers` (presets and config tables),
`client` (the HTTP requests, with our deadlines and error classes), `tokens` (access tokens
cached per account, single-flight refresh ahead of expiry) and `flows` (the browser and
device flows `popbridge accounts add --oauth2` runs once).

May import `popbridge.errors` and `popbridge.upstream`; it is, with `popbridge.admin`, one
of the two places in the core that use aiohttp (token endpoints, the flows' redirect listener).
"""

from __future__ import annotations

from popbridge.oauth2.client import Grant, OAuthError
from popbridge.oauth2.flows import FlowFailed, browser_flow, device_flow
from popbridge.oauth2.providers import PRESETS, Provider, parse_provider
from popbridge.oauth2.tokens import AccessTokens, RefreshRevoked

__all__ = [
    "PRESETS",
    "AccessTokens",
    "FlowFailed",
    "Grant",
    "OAuthError",
    "Provider",
    "RefreshRevoked",
    "browser_flow",
    "device_flow",
    "parse_provider",
]
