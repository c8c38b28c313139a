# Every target installs what it needs first, so a fresh clone works with one command.
NODE_TEST := node --import tsx --test --test-concurrency=2 --test-timeout=300000
UNIT_TESTS := $(wildcard test/*.test.ts test/*/*.test.ts)
# Suites that run a second time on the embedded database.
EMBEDDED_TESTS := $(wildcard test/store/*.test.ts test/e2e/*.test.ts)

.PHONY: install run test typecheck demo bench bench-compare bench-sync fuzz

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

install: node_modules/.installed

run: install
	./bin/appproxy-coordinator

typecheck: install
	npx tsc -p .

test: install typecheck
	$(NODE_TEST) $(UNIT_TESTS)
	APPPROXY_TEST_EMBEDDED=1 $(NODE_TEST) $(EMBEDDED_TESTS)

demo: install
	node --import tsx src/demo/demo.ts

# Benchmarks are never part of `make test`.
bench: install
	node --import tsx bench/route-latency.ts
	node --import tsx bench/compare.ts
	node --import tsx bench/failover.ts
	node --import tsx bench/sync.ts
	node --import tsx bench/cross-instance.ts

# Only the sync benchmarks: write to ack, a snapshot of 100,000 routes, a reconnect storm.
bench-sync: install
	node --import tsx bench/sync.ts
	node --import tsx bench/cross-instance.ts

# Only the side-by-side comparison with configurable-http-proxy.
bench-compare: install
	node --import tsx bench/compare.ts

# A longer fuzz run with a new seed each time; `make test` runs a short one with a fixed seed.
fuzz: install
	APPPROXY_FUZZ_RUNS=5000 APPPROXY_FUZZ_SEED=$$RANDOM $(NODE_TEST) test/security/fuzz.test.ts
