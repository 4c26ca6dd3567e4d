# moongate — build, run, test, benchmark. `make run` and `make test` are all a newcomer needs.
# Dependencies are Debian packages installed on demand by scripts/deps.sh.

CC      ?= cc
BUILD   ?= build
PKGS    := luajit libpcre2-8 yaml-0.1 libssl libcrypto libcares
CFLAGS  ?= -O2 -g
# always applied, whatever CFLAGS the command line gives (make asan overrides CFLAGS)
WARN_CFLAGS = -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Wshadow -Wstrict-prototypes \
           -fno-strict-aliasing -D_GNU_SOURCE -Iruntime
DEPS_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
DEPS_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lev -lhttp_parser -lm -ldl

SRCS    := $(filter-out runtime/mg_main.c,$(wildcard runtime/mg_*.c))
OBJS    := $(SRCS:runtime/%.c=$(BUILD)/obj/%.o)
UNIT_SRCS := $(wildcard runtime/t/test_*.c)
UNIT_BINS := $(UNIT_SRCS:runtime/t/%.c=$(BUILD)/t/%)
BUSTED  := luajit /usr/bin/busted
CONF    ?= conf/moongate.yaml

.PHONY: all deps build run test unit spec asan bench fuzz fuzz-run fmt fmt-check clean

all: build

deps:
	@scripts/deps.sh build

build: deps $(BUILD)/moongate

$(BUILD)/obj/%.o: runtime/%.c $(wildcard runtime/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN_CFLAGS) $(DEPS_CFLAGS) -c $< -o $@

# -rdynamic: the mg_ffi_* functions must be visible to LuaJIT's ffi.C
$(BUILD)/moongate: $(OBJS) $(BUILD)/obj/mg_main.o
	$(CC) $(CFLAGS) $(WARN_CFLAGS) -rdynamic $^ -o $@ $(LDFLAGS) $(DEPS_LIBS)

# Unit tests #include the .c under test so statics are testable; they link the other objects.
$(BUILD)/t/%: runtime/t/%.c $(OBJS) runtime/t/mg_test.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN_CFLAGS) $(DEPS_CFLAGS) -Iruntime/t $< $(filter-out $(BUILD)/obj/$(patsubst test_%,mg_%,$*).o,$(OBJS)) -o $@ $(LDFLAGS) $(DEPS_LIBS)

# `make run`: the demo — a local echo upstream on 127.0.0.1:9001 and the gateway on :8000.
run: build
	@scripts/deps.sh test
	@scripts/demo.sh $(BUILD)/moongate $(CONF)

unit: build $(UNIT_BINS)
	@scripts/run-tests.sh unit $(UNIT_BINS)

spec: build
	@scripts/deps.sh test
	@MOONGATE_BIN=$(abspath $(BUILD)/moongate) scripts/run-tests.sh spec

# Every test: C unit tests and busted specs, one summary line `N passed, N failed`.
test: build $(UNIT_BINS)
	@scripts/deps.sh test
	@MOONGATE_BIN=$(abspath $(BUILD)/moongate) scripts/run-tests.sh all $(UNIT_BINS)

# The same tests against a binary built with AddressSanitizer + UBSan. Sanitizer reports go
# to files (workers run detached from the terminal); each report counts as a failed test.
asan:
	@scripts/deps.sh all
	@rm -rf build/asan/reports && mkdir -p build/asan/reports
	ASAN_OPTIONS="log_path=$(abspath build/asan/reports)/asan:detect_leaks=1" \
	UBSAN_OPTIONS="log_path=$(abspath build/asan/reports)/ubsan:print_stacktrace=1" \
	SANITIZER_REPORTS=$(abspath build/asan/reports) \
	$(MAKE) BUILD=build/asan CC=clang \
	  CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  LDFLAGS="-fsanitize=address,undefined" test

# Side by side with nginx (bench/README.md), then route lookup cost for 10 to 10,000 routes.
bench: build $(BUILD)/router_bench
	@scripts/deps.sh all
	@bench/run.sh $(abspath $(BUILD)/moongate)
	@echo "== route lookup, ns per match (bench/router_bench.c)"
	@$(BUILD)/router_bench

$(BUILD)/router_bench: bench/router_bench.c runtime/mg_router.c runtime/mg_pool.c runtime/*.h
	$(CC) $(CFLAGS) $(WARN_CFLAGS) bench/router_bench.c runtime/mg_router.c runtime/mg_pool.c \
	  -lpcre2-8 -o $@

fuzz:
	@scripts/deps.sh all
	$(MAKE) -f fuzz/Makefile

fmt:
	clang-format -i runtime/*.c runtime/*.h runtime/t/*.c runtime/t/*.h fuzz/*.c

fmt-check:
	clang-format --dry-run -Werror runtime/*.c runtime/*.h runtime/t/*.c runtime/t/*.h fuzz/*.c

clean:
	rm -rf build
