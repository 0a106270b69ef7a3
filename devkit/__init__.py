"""popbridge's development kit: real peers and fakes for tests, the benchmark, fuzzing and the
quick start.

Owns the launchers of real servers (Dovecot, Cyrus, Courier IMAP, GNU Mailutils imap4d,
PostgreSQL), each started from a config in a temporary directory on free loopback ports and
stopped by PID; a throw-away TLS CA;
runners for real POP3 clients; a fault-injecting TCP proxy; local fakes of services that
cannot run here (an OAuth2 provider, scripted IMAP and JMAP peers); and the in-memory
backend for engine and session unit tests. Launchers never install anything:
`scripts/bootstrap` installs the system packages, once. Not shipped as runtime code.
"""
