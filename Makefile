# keybound's entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test deps emulators lint unit docs demo bench

## test: install what is missing, prove the emulators work, then format check, clippy, all tests, docs
test: deps emulators lint unit docs

deps:
	scripts/deps.sh

emulators:
	scripts/check-emulators.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	TSS2_LOG=all+NONE $(CARGO) test --workspace --locked

docs:
	RUSTDOCFLAGS=-Dwarnings $(CARGO) doc --workspace --no-deps --locked

## demo: a dev cluster, a new static key, keybound start --oneshot, the certificates obtained
demo:
	scripts/demo.sh

## bench: one join on loopback per key type and backend; one signature per backend (median, p99)
bench:
	$(CARGO) bench --locked --bench join --bench sign
