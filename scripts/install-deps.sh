#!/usr/bin/env bash
# Install the system packages the tests, benchmarks and demo need (TESTING.md).
# Idempotent; needs root. Debian (bookworm) package names. libprotobuf-dev
# carries the well-known .proto files protoc needs for etcd-client (it is
# only a Recommends of protobuf-compiler, and we install without those).
set -euo pipefail
packages=(iproute2 nftables iputils-ping jq etcd-server protobuf-compiler libprotobuf-dev openssl
          containernetworking-plugins util-linux procps)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
