#!/usr/bin/python3
"""Read a tsh-style identity file with Python's `cryptography`, an implementation keybound did
not write, the way tsh splits it (api/identityfile): PEM blocks plus SSH lines.

Usage: identity_file.py IDENTITY_FILE
Prints what it found; exits non-zero when a part is missing or the key and certificate differ.
"""
import re
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization

text = open(sys.argv[1]).read()
pems = re.findall(r"(-----BEGIN ([A-Z ]+)-----\n.*?-----END \2-----\n)", text, re.S)
keys = [p for p, kind in pems if kind.endswith("PRIVATE KEY")]
certs = [x509.load_pem_x509_certificate(p.encode()) for p, kind in pems if kind == "CERTIFICATE"]
lines = [l for l in text.splitlines() if not l.startswith("-----") and " " in l]
ssh_certs = [l for l in lines if "-cert-v01@openssh.com " in l]
cas = [l for l in lines if l.startswith("@cert-authority ")]
assert len(keys) == 1, "one private key"
assert len(ssh_certs) == 1, "one SSH certificate"
assert len(certs) >= 2, "a TLS certificate and at least one CA"
key = serialization.load_pem_private_key(keys[0].encode(), password=None)
leaf = certs[0]
fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
assert key.public_key().public_bytes(*fmt) == leaf.public_key().public_bytes(*fmt), "key and certificate differ"
print("private key matches the TLS certificate")
print("subject CN=" + leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
print(f"{len(cas)} @cert-authority line(s)")
print(f"{len(certs) - 1} CA certificate(s)")
