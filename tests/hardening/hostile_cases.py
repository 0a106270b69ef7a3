"""The hostile inputs of test_hostile_extra.py: (bytes sent, exact reply lines).

Only what tests/e2e/test_bad_input.py lacks, grouped by the threat. The mailbox is alice's,
seeded with three generated 500-octet messages; replies that show sizes are computed from them.
"""

from __future__ import annotations

import base64
import json

from devkit.dovecot import generate_message, wire_form

SIZES = [len(wire_form(generate_message(i, 500))) for i in (1, 2, 3)]
FIRST = wire_form(generate_message(1, 500))
WHOLE_FIRST = [b"+OK %d octets" % SIZES[0], *FIRST.split(b"\r\n")[:-1], b"."]
NOT_IN_STATE = b"-ERR command not valid in this state"
AUTH_FAILED = b"-ERR [AUTH] authentication failed"
CONTROL = b"-ERR control characters are not allowed"
NON_ASCII = b"-ERR non-ASCII characters are not allowed"
BAD_NUMBER = b"-ERR invalid message number"
NO_SUCH = b"-ERR no such message"
INVALID_BASE64 = b"-ERR invalid base64"
NO_ARGUMENTS = b"-ERR this command takes no arguments"
TOO_LONG = b"-ERR line too long"
# Dovecot offers no XOAUTH2: a well-formed token login is an upstream configuration problem
NO_OAUTH_UPSTREAM = b"-ERR [SYS/PERM] mail store error"
XOAUTH2_ERROR = b"+ " + base64.b64encode(
    json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"}).encode()
)
OAUTHBEARER_ERROR = b"+ " + base64.b64encode(json.dumps({"status": "invalid_token"}).encode())
USERNAME, PASSWORD = b"+ VXNlcm5hbWU6", b"+ UGFzc3dvcmQ6"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def auth(mechanism: bytes, payload: bytes) -> bytes:
    return b"AUTH " + mechanism + b" " + b64(payload) + b"\r\n"


LIMITS = [
    # RFC 2449 section 4: 255 octets with CRLF must be accepted
    (b"USER " + b"u" * 248 + b"\r\nPASS x\r\n", [b"+OK send PASS", AUTH_FAILED]),
    (b"USER alice\r\nPASS " + b"p" * 300 + b"\r\n", [b"+OK send PASS", b"-ERR password too long"]),
    (b"AUTH PLAIN " + b"A" * 17000 + b"\r\n", [TOO_LONG]),
    (b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n" + b"A" * 17000 + b"\r\n",
     [USERNAME, PASSWORD, TOO_LONG]),
    (auth(b"PLAIN", b"\0alice\0" + b"x" * 1100), [b"-ERR password too long"]),
]  # fmt: skip
CONTROLS = [
    (b"\x00\r\n", [CONTROL]),
    (b"USER alice\r\nPASS sec\x00ret\r\n", [b"+OK send PASS", CONTROL]),
    (b"\rUSER alice\r\n", [CONTROL]),
    (b"USER alice\nPASS wrong\n", [b"+OK send PASS", AUTH_FAILED]),  # LF alone ends a line
    (b"\n", [b"-ERR unknown command"]),
    (b"AUTH PLAIN\r\nAGFs\x00aWNl\r\n", [b"+ ", INVALID_BASE64]),
]
WRONG_STATE = [
    (b"TOP 1 0\r\n", [NOT_IN_STATE]),
    (b"NOOP\r\n", [NOT_IN_STATE]),
    (b"RSET\r\n", [NOT_IN_STATE]),
    (b"QUIT now\r\n", [NO_ARGUMENTS]),
]
SASL = [
    (b"AUTH PLAIN AGFsaWNl=AA\r\n", [INVALID_BASE64]),  # padding in the middle
    (b"AUTH PLAIN AGFsaWNlAHNlY3JldA\r\n", [INVALID_BASE64]),  # padding missing
    (b"AUTH PLAIN =\r\n", [b"-ERR malformed PLAIN message"]),  # empty initial response
    (auth(b"PLAIN", b"\0alice\0secret\0more"), [b"-ERR malformed PLAIN message"]),
    (auth(b"PLAIN", b"\0\xff\xfe\0secret"), [b"-ERR user name is not UTF-8"]),
    (auth(b"plain", b"\0alice\0wrong"), [AUTH_FAILED]),  # the mechanism name is case-blind
    (b"AUTH PLAIN a b\r\n", [b"-ERR AUTH takes a mechanism and an optional initial response"]),
    (b"AUTH PLAIN\r\nAGFs aWNl\r\n", [b"+ ", INVALID_BASE64]),
    (b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n*\r\n",
     [USERNAME, PASSWORD, b"-ERR authentication cancelled"]),
    (b"AUTH LOGIN\r\n!!!\r\n", [USERNAME, INVALID_BASE64]),
    (b"AUTH LOGIN =\r\n", [b"-ERR empty user name"]),
    (auth(b"XOAUTH2", b"user=alice\x01auth=Basic abc\x01\x01"), [b"-ERR malformed bearer token"]),
    (auth(b"XOAUTH2", b"user=alice\x01auth\x01\x01"), [b"-ERR malformed key=value pair"]),
    (auth(b"OAUTHBEARER", b"n,a=alice,\x01host=x\x01\x01"),
     [b"-ERR malformed OAUTHBEARER message"]),
    (auth(b"OAUTHBEARER", b"p=tls-unique,a=alice,\x01auth=Bearer t\x01\x01"),
     [b"-ERR malformed OAUTHBEARER message"]),  # channel binding is not offered
]  # fmt: skip
STLS = [
    (b"STLS x\r\n", [NO_ARGUMENTS]),
    # no TLS on this listener: the refusal must not end the plaintext session
    (b"STLS\r\nUSER alice\r\nPASS wrong\r\n",
     [b"-ERR TLS not available on this port", b"+OK send PASS", AUTH_FAILED]),
]  # fmt: skip
INJECTION = [
    (b"USER {5}\r\nPASS x\r\n", [b"+OK send PASS", AUTH_FAILED]),
    (b"USER alice\r\nPASS {999}\r\n", [b"+OK send PASS", AUTH_FAILED]),
    (b"USER alice\r\nPASS ) LOGOUT (\r\n", [b"+OK send PASS", AUTH_FAILED]),
    (b"USER %*\r\nPASS x\r\n", [b"+OK send PASS", AUTH_FAILED]),
    (auth(b"PLAIN", b"\0alice\r\nA1 DELETE Archive\0secret"), [AUTH_FAILED]),
    (auth(b"PLAIN", b'\0alice\0secret" LOGOUT \\'), [AUTH_FAILED]),
    (auth(b"PLAIN", b"\0{5}\0x"), [AUTH_FAILED]),
    (b"AUTH LOGIN\r\n" + b64(b'alice" LOGOUT') + b"\r\n" + b64(b"x\r\nA1 DELETE Archive") + b"\r\n",
     [USERNAME, PASSWORD, AUTH_FAILED]),
    (b"AUTH LOGIN " + b64(b"{3}\r\nabc") + b"\r\n" + b64(b"x") + b"\r\n",
     [PASSWORD, AUTH_FAILED]),
    (auth(b"XOAUTH2", b'user=alice" LOGOUT\x01auth=Bearer t\x01\x01'), [NO_OAUTH_UPSTREAM]),
    (auth(b"XOAUTH2", b"user=alice\r\nA1 DELETE Archive\x01auth=Bearer t\x01\x01") + b"\r\n",
     [XOAUTH2_ERROR, AUTH_FAILED]),
    (auth(b"OAUTHBEARER", b'n,a=alice" LOGOUT,\x01auth=Bearer t\x01\x01'), [NO_OAUTH_UPSTREAM]),
    (auth(b"OAUTHBEARER", b"n,a=alice\r\nA1 DELETE Archive,\x01auth=Bearer t\x01\x01")
     + b"AQ==\r\n", [OAUTHBEARER_ERROR, AUTH_FAILED]),
    (auth(b"OAUTHBEARER", b"n,a=al=2Cice=3D,\x01auth=Bearer t\x01\x01"), [NO_OAUTH_UPSTREAM]),
]  # fmt: skip
AUTHORIZATION_EXTRA = LIMITS + CONTROLS + WRONG_STATE + SASL + STLS + INJECTION

TRANSACTION_EXTRA = [
    (b"STAT" + b" " * 1018 + b"\r\n", [b"+OK 3 %d" % sum(SIZES)]),  # 1024 octets: accepted
    (b"STAT" + b" " * 1019 + b"\r\n", [TOO_LONG]),  # 1025 octets: refused, tail not run
    (b"NOOP\r\n" * 100, [b"+OK"] * 100),  # deep pipelining
    (b"NOOP\r\r\n", [CONTROL]),
    (b"DELE 1\rQUIT\r\n", [CONTROL]),  # neither DELE nor QUIT runs
    (b"LIST 0\r\n", [NO_SUCH]),
    (b"UIDL 0\r\n", [NO_SUCH]),
    (b"LIST 01\r\n", [b"+OK 1 %d" % SIZES[0]]),
    (b"LIST 1 \r\n", [b"+OK 1 %d" % SIZES[0]]),
    (b"DELE 4294967297\r\n", [NO_SUCH]),
    (b"DELE -0\r\n", [BAD_NUMBER]),
    # RFC 1939 §7 bounds no number: a count past the end is the whole message, a number
    # past any message is "no such message", the same answer as for a small unknown one
    (b"TOP 1 12345678901\r\n", WHOLE_FIRST),
    (b"TOP 1 " + b"9" * 400 + b"\r\n", WHOLE_FIRST),
    (b"TOP " + b"9" * 40 + b" 1\r\n", [NO_SUCH]),
    (b"RETR 12345678901234567890\r\n", [NO_SUCH]),
    (b"LIST " + b"0" * 30 + b"1\r\n", [b"+OK 1 %d" % SIZES[0]]),
    (b"TOP 1 +5\r\n", [b"-ERR invalid line count"]),
    (b"TOP 1 1.5\r\n", [b"-ERR invalid line count"]),
    ("RETR \uff11\r\n".encode(), [NON_ASCII]),  # fullwidth digit one
    (b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n", [NOT_IN_STATE]),
    (b"AUTH\r\n", [NOT_IN_STATE]),
    (b"QUIT x\r\nRSET\r\n", [NO_ARGUMENTS, b"+OK deletion marks removed"]),
    (b"DELE 1\r\nDELE 2\r\nDELE 3\r\nRSET\r\nSTAT\r\n",
     [b"+OK message 1 deleted", b"+OK message 2 deleted", b"+OK message 3 deleted",
      b"+OK deletion marks removed", b"+OK 3 %d" % sum(SIZES)]),
]  # fmt: skip
