"""Benchmarks of popbridge against Dovecot's own POP3 (direct) and Dovecot's POP3-over-IMAP
(imapc), all on loopback over the same seeded mailboxes: ``python -m bench`` (see README.md).

Not part of the installed package and never run by CI; ``bench/test_bench_smoke.py`` checks
that the benchmark itself still works, without looking at any timing.
"""
