#!/usr/bin/env bash
# Installs the system tools the black-box tests (tests/) need to build and run.
# Idempotent: apt-get runs only when something is missing.
#
# To add a tool, add a `need COMMAND DEBIAN_PACKAGE` (or `need_file PATH DEBIAN_PACKAGE`)
# line below.
set -euo pipefail

missing_packages=()

# need COMMAND PACKAGE: queue PACKAGE for installation when COMMAND is not on PATH.
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        missing_packages+=("$2")
    fi
}

# need_file PATH PACKAGE: queue PACKAGE for installation when PATH does not exist.
need_file() {
    if [ ! -e "$1" ]; then
        missing_packages+=("$2")
    fi
}

# etcdctl (API v3) for the etcdctl scenarios.
need etcdctl etcd-client
# The etcd-client crate compiles etcd's .proto files with protoc when cairn-tests builds;
# they import protobuf's well-known types.
need protoc protobuf-compiler
need_file /usr/include/google/protobuf/descriptor.proto libprotobuf-dev
# `ip` (network namespaces, veth pairs, bridges) for the cluster partition tests.
need ip iproute2

if [ "${#missing_packages[@]}" -eq 0 ]; then
    echo "install-test-deps: all test tools present"
    exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi

echo "install-test-deps: installing ${missing_packages[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update
"${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing_packages[@]}"
