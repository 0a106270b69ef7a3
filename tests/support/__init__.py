"""Test support: real Dovecot instances, a throw-away TLS CA and real POP3 client runners."""
