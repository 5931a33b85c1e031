#!/usr/bin/python3
"""Print the OpenSSH public key of a PEM private key with Python's `cryptography`, an
implementation keybound did not write.

Usage: public_key.py PRIVATE_KEY_PEM_FILE
"""
import sys

from cryptography.hazmat.primitives import serialization

with open(sys.argv[1], "rb") as f:
    key = serialization.load_pem_private_key(f.read(), password=None)
print(
    key.public_key()
    .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    .decode()
)
