#!/usr/bin/env python3
"""Runs a program as on a kernel without openat2 (before Linux 5.6, or in a sandbox that hides
the call): a seccomp filter, made with libseccomp's own Python binding (Debian's
python3-seccomp), makes openat2 fail with ENOSYS. Everything else is allowed.

Usage: without_openat2.py PROGRAM [ARGS...]
"""

import errno
import os
import sys

import seccomp

if len(sys.argv) < 2:
    sys.exit("usage: without_openat2.py PROGRAM [ARGS...]")
rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "openat2")
rules.load()
os.execv(sys.argv[1], sys.argv[1:])
