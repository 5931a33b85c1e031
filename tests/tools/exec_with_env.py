#!/usr/bin/env python3
"""Runs a program with exactly the environment given, in order, repeated names included, which
neither Rust's Command nor env(1) can make (both keep one value per name). os.execve takes the
environment as a mapping and hands the kernel its keys() and values() pair by pair, so a mapping
whose keys repeat gives an environment in which a name repeats.

Usage: exec_with_env.py [NAME=VALUE...] -- PROGRAM [ARGS...]
"""

import os
import sys


class Entries:
    """A mapping in name only: the (name, value) pairs as given, repeats kept."""

    def __init__(self, pairs):
        self.pairs = pairs

    def keys(self):
        return [name for name, _ in self.pairs]

    def values(self):
        return [value for _, value in self.pairs]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, name):
        raise KeyError(name)


args = sys.argv[1:]
if "--" not in args:
    sys.exit("usage: exec_with_env.py [NAME=VALUE...] -- PROGRAM [ARGS...]")
split = args.index("--")
pairs = [entry.split("=", 1) for entry in args[:split]]
program = args[split + 1 :]
if not program or any(len(pair) != 2 for pair in pairs):
    sys.exit("usage: exec_with_env.py [NAME=VALUE...] -- PROGRAM [ARGS...]")
os.execve(program[0], program, Entries(pairs))
