#!/usr/bin/python3
"""Verify a compact JWS with PyJWT, an implementation keybound did not write.

Usage: verify_jws.py PUBLIC_KEY_PEM_FILE < jws
Prints the alg from the header and the verified payload's "nonce" claim; exits non-zero when the
signature does not verify.
"""
import sys

import jwt

token = sys.stdin.read().strip()
with open(sys.argv[1], "rb") as f:
    key = f.read()
header = jwt.get_unverified_header(token)
claims = jwt.decode(
    token,
    key=key,
    algorithms=[header["alg"]],
    options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
)
print(header["alg"], claims["nonce"])
