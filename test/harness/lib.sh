#!/usr/bin/env bash
# test/harness/lib.sh --- shared set-up for `make demo`, `make test` and the
# benchmarks.
#
# Everything here is written for a fresh Debian 12 machine on which the
# caller is root and nothing but this repository is present.  It installs
# the Debian packages the project needs (only those missing), builds and
# installs the extension, and starts throwaway PostgreSQL 15 clusters.
# initdb refuses to run as root, so when run as root the clusters belong to
# an unprivileged user, `lhub`, created here; clients (psql, pg_regress,
# pg_prove) connect over a Unix socket as the cluster's superuser
# `postgres`, with trust authentication that only the socket's owner and
# root can reach.  Run as an ordinary user, the clusters simply belong to
# that user.

set -euo pipefail

LH_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PG_MAJOR=15
# LH_PGROOT: install into a private, relocated copy of the PostgreSQL tree
# instead of the system one, so that several work trees can build and test
# side by side without loading each other's library.  Empty means the system
# tree.
LH_PGROOT=${LH_PGROOT:-}
PG_BIN=$LH_PGROOT/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
PGXS_DIR=/usr/lib/postgresql/$PG_MAJOR/lib/pgxs
CLUSTER_USER=lhub

# Debian packages: build tools and headers, the server, contrib (isn for
# the benchmark), pgTAP and pg_prove, IPC::Run for TAP crash tests, nginx and
# wrk for HTTP benchmarks, python3 for the loopback test receiver, clang-14
# and its sanitizer/libFuzzer runtime for the parser fuzz test, openssl for
# the HTTPS receiver's test certificate, libsodium for sealed secrets,
# nats-server (the NATS JetStream broker the nats transport's tests start as
# three-node clusters on loopback) and libnats-dev (its C client, linked by
# the extension's nats transport, the test tool and the benchmark).
LH_PACKAGES=(
	build-essential
	postgresql-$PG_MAJOR
	postgresql-client-$PG_MAJOR
	postgresql-server-dev-$PG_MAJOR
	postgresql-contrib
	postgresql-$PG_MAJOR-pgtap
	libtap-parser-sourcehandler-pgtap-perl
	libipc-run-perl
	libcurl4-openssl-dev
	libsodium-dev
	# libpq: the postgresql:// transport relays events to a central hub (workers/pg_transport.c)
	libpq-dev
	python3
	clang-14
	libclang-rt-14-dev
	nginx-light
	wrk
	util-linux
	openssl
	nats-server
	libnats-dev
	# test/scripts/metrics_exporter.sh: promtool checks hub.metrics(), and
	# the exporter scrapes the hub through sql/postgres_exporter.yml (their
	# services are kept from starting and from starting at boot: below)
	prometheus
	prometheus-postgres-exporter
)

lh_log() { printf '== %s\n' "$*" >&2; }

# lh_install_packages --- apt-get install whatever is missing; a no-op on a
# machine that has everything, so a second run costs nothing.
lh_install_packages()
{
	local missing=() p
	for p in "${LH_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
		return 1
	fi
	lh_log "installing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# Debian's postgresql-common would create and start a default cluster;
	# we start our own, so tell it not to.
	mkdir -p /etc/postgresql-common/createcluster.d
	[ -f /etc/postgresql-common/createcluster.d/50-logistics-hub.conf ] ||
		echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/50-logistics-hub.conf
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# nats-server's package enables a service (127.0.0.1:4222 in its
	# /etc/nats-server.conf); the tests start their own servers, so none
	# runs on a machine where systemd would start it.
	if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
		systemctl disable --now nats-server >/dev/null 2>&1 || true
	fi
	# prometheus and prometheus-postgres-exporter come with services that
	# would listen on every address (:9090, :9187); the tests run their own
	# exporter on 127.0.0.1 only.  A policy-rc.d refusing every start keeps
	# the package scripts from starting them (a container may have one
	# already: then it is left as it is), and their boot links are removed.
	local policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\n# logistics_hub test harness: no service starts during its installs\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		policy=ours
	fi
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || { [ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d; return 1; }
	[ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d
	local svc
	for svc in prometheus prometheus-postgres-exporter; do
		# (only a package this call installed: never an operator's own service)
		[[ " ${missing[*]} " == *" $svc "* ]] || continue
		if command -v systemctl >/dev/null; then
			# (works without a running systemd too: it edits the unit links)
			systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
		else
			rm -f "/etc/systemd/system/multi-user.target.wants/$svc.service"
		fi
	done
}

# lh_build_install --- build with -Werror and install into the PostgreSQL 15
# tree.  Needs root (or a writable PostgreSQL tree).
lh_build_install()
{
	lh_log "building and installing logistics_hub"
	if [ -n "$LH_PGROOT" ] && [ ! -x "$PG_BIN/postgres" ]; then
		mkdir -p "$LH_PGROOT/usr/lib/postgresql" "$LH_PGROOT/usr/share/postgresql"
		cp -a /usr/lib/postgresql/$PG_MAJOR "$LH_PGROOT/usr/lib/postgresql/"
		cp -a /usr/share/postgresql/$PG_MAJOR "$LH_PGROOT/usr/share/postgresql/"
		# the relocated pg_config points at usr/include under the copy
		ln -sfn /usr/include "$LH_PGROOT/usr/include"
		# an installation of the system tree is not this checkout's
		rm -f "$LH_PGROOT"/usr/share/postgresql/$PG_MAJOR/extension/logistics_hub* \
			"$LH_PGROOT"/usr/lib/postgresql/$PG_MAJOR/lib/logistics_hub.so
	fi
	make -C "$LH_TOP" -s PG_CONFIG="$PG_CONFIG" all >/dev/null
	if [ "$(id -u)" -eq 0 ] || [ -w "$($PG_CONFIG --pkglibdir)" ]; then
		make -C "$LH_TOP" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
	else
		sudo make -C "$LH_TOP" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
	fi
}

# lh_as_cluster_user CMD... --- run a command as the owner of the clusters.
lh_as_cluster_user()
{
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u "$CLUSTER_USER" -- "$@"
	else
		"$@"
	fi
}

lh_ensure_user()
{
	[ "$(id -u)" -eq 0 ] || return 0
	id "$CLUSTER_USER" >/dev/null 2>&1 ||
		useradd --system --no-create-home --shell /usr/sbin/nologin "$CLUSTER_USER"
}

# lh_cluster_dir NAME --- where cluster NAME lives: in the project folder
# (.cluster/NAME) when the cluster user can reach it, else under /tmp.
lh_cluster_dir()
{
	local name=$1 base="$LH_TOP/.cluster"
	mkdir -p "$base"
	if [ "$(id -u)" -eq 0 ]; then
		chown "$CLUSTER_USER" "$base"
		if ! runuser -u "$CLUSTER_USER" -- test -w "$base"; then
			base=/tmp/logistics_hub-clusters
			mkdir -p "$base"
			chown "$CLUSTER_USER" "$base"
		fi
	fi
	echo "$base/$name"
}

# lh_cluster_stop NAME --- stop and remove cluster NAME if it exists.
lh_cluster_stop()
{
	local dir
	dir=$(lh_cluster_dir "$1")
	if [ -f "$dir/data/postmaster.pid" ]; then
		lh_as_cluster_user "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	rm -rf "$dir"
}

# lh_cluster_start NAME PORT [extra postgresql.conf lines...] --- a fresh
# cluster with the library preloaded (unless LH_NO_PRELOAD is set); sets PGHOST, PGPORT, PGUSER and
# LH_CLUSTER_DIR for the caller.  The key that seals endpoint secrets is
# made fresh for every cluster: 32 random bytes in $LH_CLUSTER_DIR/secret.key,
# owned by the cluster user, mode 0600, outside the data directory (so a
# copy of the data directory never carries its key), named by
# logistics_hub.secret_key_file; removed with the cluster.
lh_cluster_start()
{
	local name=$1 port=$2 dir
	shift 2
	lh_ensure_user
	lh_cluster_stop "$name"
	dir=$(lh_cluster_dir "$name")
	mkdir -p "$dir/data" "$dir/sock"
	[ "$(id -u)" -eq 0 ] && chown -R "$CLUSTER_USER" "$dir"
	chmod 700 "$dir/data"
	(umask 077 && head -c 32 /dev/urandom >"$dir/secret.key")
	[ "$(id -u)" -eq 0 ] && chown "$CLUSTER_USER" "$dir/secret.key"
	chmod 600 "$dir/secret.key"
	lh_as_cluster_user "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust \
		--encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; return 1; }
	{
		echo "listen_addresses = ''"
		echo "port = $port"
		echo "unix_socket_directories = '$dir/sock'"
		[ -n "${LH_NO_PRELOAD:-}" ] || echo "shared_preload_libraries = 'logistics_hub'"
		[ -n "${LH_NO_PRELOAD:-}" ] || echo "logistics_hub.secret_key_file = '$dir/secret.key'"
		echo "max_worker_processes = 16"
		echo "fsync = off"
		echo "logging_collector = off"
		echo "lc_messages = 'C'"
		# test clusters: receivers live on 127.0.0.1; no dispatcher and no
		# inbox worker unless a test or benchmark asks for one (later lines
		# override these)
		echo "logistics_hub.egress_allow = '127.0.0.1, public'"
		echo "logistics_hub.dispatchers = 0"
		echo "logistics_hub.inbox_workers = 0"
		local line
		for line in "$@"; do echo "$line"; done
	} >>"$dir/data/postgresql.conf"
	lh_as_cluster_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
		{ tail -20 "$dir/server.log" >&2; return 1; }
	export PGHOST="$dir/sock" PGPORT="$port" PGUSER=postgres LH_CLUSTER_DIR="$dir"
}

# lh_prepare NAME PORT --- everything up to a running cluster.
lh_prepare()
{
	lh_install_packages
	lh_build_install
	lh_cluster_start "$@"
}
