#!/usr/bin/env bash
# Install what redhand's tests need (Debian packages, a virtualenv with the
# test extras), then run the linters, the type checker and the tests.
# Usage: bash tests/run.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
need() {  # need COMMAND PACKAGE: install PACKAGE when COMMAND is missing
    command -v "$1" >/dev/null 2>&1 || apt_packages+=("$2")
}
need gcc gcc
need g++ g++
need gdb gdb
need eu-stack elfutils
need strace strace
need rustc rustc
need ocamlopt ocaml-nox
need xz xz-utils
need debuginfod debuginfod
need readelf binutils
need dwz dwz
need lldb lldb
need unshare util-linux
need setpriv util-linux
dpkg -s libc6-dbg >/dev/null 2>&1 || apt_packages+=(libc6-dbg)
# Real LD_PRELOAD interposers, for redhand linkage
dpkg -s libfaketime >/dev/null 2>&1 || apt_packages+=(libfaketime)
dpkg -s libeatmydata1 >/dev/null 2>&1 || apt_packages+=(libeatmydata1)
dpkg -s libjemalloc2 >/dev/null 2>&1 || apt_packages+=(libjemalloc2)
dpkg -s libtcmalloc-minimal4 >/dev/null 2>&1 || apt_packages+=(libtcmalloc-minimal4)
dpkg -s libmimalloc2.0 >/dev/null 2>&1 || apt_packages+=(libmimalloc2.0)
# A real PostgreSQL for the fleet's crash database (a private cluster per test run)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || apt_packages+=(postgresql)
# A real browser for the crash store's web page: Debian's chromium, driven headless
need chromium chromium
need chromedriver chromium-driver
# lldb's Python half (without it Debian's lldb cannot run commands from -o)
compgen -G "/usr/lib/llvm-*/lib/python3*/dist-packages/lldb/embedded_interpreter.py" >/dev/null \
    || apt_packages+=(python3-lldb-14)
python=/usr/bin/python3
[ -x "$python" ] || python=python3
"$python" -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_packages+=(python3-venv)
if [ ${#apt_packages[@]} -gt 0 ]; then
    echo "installing: ${apt_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

# upx, for packed programs: Debian 12 has it in bookworm-backports only.  It is fetched from
# there with a private package list (the system's apt sources are left as they are) and
# installed like any package; a release that has upx-ucl in main installs it directly.
if ! command -v upx >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends upx-ucl >/dev/null 2>&1; then
        codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
        lists=$(mktemp -d)
        mkdir -p "$lists/lists/partial" "$lists/cache/archives/partial"
        echo "deb http://deb.debian.org/debian $codename-backports main" >"$lists/sources.list"
        private=(-o "Dir::Etc::SourceList=$lists/sources.list" -o Dir::Etc::SourceParts=/dev/null
                 -o "Dir::State::Lists=$lists/lists" -o "Dir::Cache=$lists/cache"
                 -o APT::Sandbox::User=root)
        echo "installing: upx-ucl (from $codename-backports)"
        apt-get "${private[@]}" update -qq
        (cd "$lists" && apt-get -qq "${private[@]}" download upx-ucl)
        apt-get install -y -qq --no-install-recommends "$lists"/upx-ucl_*.deb >/dev/null
        rm -rf "$lists"
    fi
fi

venv=.venv
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,source,fleet,web,browser-tests]'

echo "== ruff"
"$venv/bin/ruff" check src tests bench
"$venv/bin/ruff" format --check src tests bench
echo "== mypy"
"$venv/bin/mypy"
echo "== pytest"
exec "$venv/bin/python" -m pytest -q "$@"
