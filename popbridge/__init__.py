"""popbridge: a POP3 server whose maildrop is a live IMAP or HTTP mailbox."""

__version__ = "0.1.0"
