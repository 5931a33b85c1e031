# keybound's entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
CARGO ?= cargo
# Every backend: pkcs11 is on by default; tpm needs libtss2-dev, which `make deps` installs.
FEATURES ?= --features tpm

.PHONY: test deps emulators lint unit docs demo bench perf release fuzz

## test: install what is missing, prove the emulators work, then format check, clippy, all tests, docs
test: deps emulators lint unit docs

deps:
	scripts/deps.sh

emulators:
	scripts/check-emulators.sh

lint:
	$(CARGO) fmt --all --check
	# No module imports, through others, itself (docs/ARCHITECTURE.md).
	python3 scripts/import-graph.py
	$(CARGO) clippy --workspace --all-targets --locked $(FEATURES) -- -D warnings
	# The smallest build (file and env keys only) must build too.
	$(CARGO) check -p keybound --no-default-features --locked

unit:
	TSS2_LOG=all+NONE $(CARGO) test --workspace --locked $(FEATURES)

docs:
	RUSTDOCFLAGS=-Dwarnings $(CARGO) doc --workspace --no-deps --locked $(FEATURES)

## demo: install what is missing, then a dev cluster, a new static key (a file, then in SoftHSM),
## keybound doctor, keybound start --oneshot, the certificates obtained; standard mode with keys
## made inside SoftHSM, registered, then rotated
demo: deps
	scripts/demo.sh

## bench: one join on loopback per key type and backend; one signature per backend; one renewal
## (authenticated rejoin + an identity output) (median, p99); 500 bots joining at once; a soak
## run of thousands of renewals (memory and file descriptors must stay flat)
bench:
	$(CARGO) bench --locked $(FEATURES) --bench join --bench sign --bench renewal --bench load --bench soak --bench ssh_proxy

## perf: every benchmark, plus start --oneshot as a process, the binary size and 500 concurrent
## joins; rewrites the tables of docs/PERFORMANCE.md
perf:
	scripts/perf.py

## fuzz: every fuzz target for FUZZ_SECONDS each (default 60); needs cargo-fuzz. Not part of
## make test, which runs the kept inputs (tests/data/fuzz-regressions) as ordinary tests.
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

## release: the release binary with every backend
release:
	$(CARGO) build --release --locked $(FEATURES)
