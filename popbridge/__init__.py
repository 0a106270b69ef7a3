"""popbridge: a POP3 server whose maildrop is a live IMAP or HTTP mailbox.

The core: the POP3 protocol (`pop3`), the network side (`frontend`), a session's meaning
(`session`), durable state (`store`), credentials (`accounts`, `oauth2`), what a backend
may use (`upstream`), the command line (`cli`), and the backend contract (`contract`).
It never imports a backend: backends are found by their `popbridge.backends` entry
points. Each package's docstring says what it may import; tests/test_layout.py checks it.
"""

__version__ = "0.1.0"
