"""Backends: one package per upstream kind, each implementing popbridge.contract.Backend.

`backends.http` holds what the HTTP backends (JMAP, Graph, Gmail) share: deadlines, bounded reads
and Retry-After.
"""
