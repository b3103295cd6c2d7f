# The two commands: `make demo` runs the demo end to end, `make test` runs every gate.
CARGO ?= cargo

.PHONY: demo test lint redis-server

demo: redis-server
	$(CARGO) run -q -p ballast-cli -- demo

test: redis-server lint
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps -q

redis-server:
	@scripts/ensure-redis.sh
