#!/usr/bin/env bash
# tools/deps.sh - install the Debian packages libdedup needs (sourced by
# tools/quickstart and tools/check). Installs only what is missing; needs
# root or sudo for apt-get.
DEDUP_BUILD_PKGS="build-essential cmake pkg-config liburing-dev libxxhash-dev libjemalloc-dev"
DEDUP_TEST_PKGS="redis-server redis-tools python3 gnuplot-nox valgrind"
# Real test suites under preload (tests/suite.cmake, label suite): CPython's
# regression tests for Debian's python3.11, and a JDK (javac) for the JVM test.
DEDUP_SUITE_PKGS="libpython3.11-testsuite openjdk-17-jdk-headless"

dedup_install_missing() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "==> installing: ${missing[*]}"
	local sudo=""
	[ "$(id -u)" -ne 0 ] && sudo="sudo"
	$sudo apt-get update -qq >/dev/null &&
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >/dev/null ||
	{ echo "error: could not install ${missing[*]} (apt-get failed)" >&2; return 1; }
}
