# Makefile --- PGXS build of the logistics_hub extension, plus the two
# README commands (make demo, make test) that work on a fresh Debian 12
# machine before PostgreSQL or pg_config is installed: those targets only
# call scripts under test/harness/, which install what they need and then
# re-enter this Makefile.

EXTNAME = logistics_hub
EXTENSION = control/$(EXTNAME)
MODULE_big = $(EXTNAME)

# Every C file under extension/ (types and SQL-callable functions) and
# workers/ (background workers) is part of the one shared library.
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard extension/*.c workers/*.c)))

# Install scripts: every released version keeps its script and every
# upgrade step keeps its script.
DATA = $(wildcard sql/$(EXTNAME)--*.sql)

PG_CPPFLAGS = -I$(srcdir)/extension -I$(srcdir)/workers $(shell curl-config --cflags 2>/dev/null)
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers
SHLIB_LINK = $(shell curl-config --libs 2>/dev/null)

# JIT bitcode is not needed and Debian builds it with a clang that may be
# absent.
override with_llvm = no

PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)

.PHONY: demo test bench stop-demo

ifneq ($(PGXS),)
include $(PGXS)
else
all:
	@echo "pg_config not found: run 'make demo' or 'make test', which install PostgreSQL 15 first" >&2
	@exit 1
clean:
	rm -f $(OBJS) $(EXTNAME).so
endif

demo:
	@bash test/harness/demo.sh

test:
	@bash test/harness/run-tests.sh

bench:
	@bash test/bench/run.sh

stop-demo:
	@bash test/harness/demo.sh --stop
