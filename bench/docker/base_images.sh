#!/bin/sh
# Local stand-ins for the two base images the repo's Dockerfile and compose files name, for a machine with a Docker
# engine but no Docker Hub (an offline or firewalled box): only Debian's package mirror is needed.
#
#   python:3.11-slim   Debian bookworm (debootstrap, minbase) + python3.11, pip, venv; pip usable as root the way
#                      the official image allows (no EXTERNALLY-MANAGED marker), `python` and `pip` on PATH.
#   redis:7.2-alpine   Debian bookworm + redis-server/redis-cli 7.0 (what the compose files run: `redis-server ...`,
#                      `redis-cli ping`, `sh -c` for the Sentinels), working directory /data, protected mode off
#                      as the official image builds it.
#
# Where Docker Hub is reachable, do not run this: `docker compose build` pulls the real images. The stand-ins carry
# the host's CA certificates (/usr/local/share/ca-certificates/*.crt), so pip inside `docker build` trusts what the
# host trusts (e.g. a TLS-inspecting egress proxy).
#
#   sudo sh bench/docker/base_images.sh            # needs root (debootstrap), ~3-6 min, ~400 MB of disk
#   sh bench/docker/base_images.sh redis      # only one of them (python | redis)
#   MIRROR=http://deb.debian.org/debian sh bench/docker/base_images.sh
set -eu

MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
WORK=${WORK:-/var/tmp/sentinel-base-images}
PYTHON_TAG=${PYTHON_TAG:-python:3.11-slim}
REDIS_TAG=${REDIS_TAG:-redis:7.2-alpine}
WHICH=${1:-all}

command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install -y debootstrap" >&2; exit 1; }
mkdir -p "$WORK/cache"

# rootfs DIR PACKAGES: a minimal bookworm with PACKAGES, apt lists and caches removed.
rootfs() {
    dir=$1 packages=$2
    rm -rf "$dir"
    debootstrap --variant=minbase --cache-dir="$WORK/cache" --include="$packages" "$SUITE" "$dir" "$MIRROR"
    echo "deb $MIRROR $SUITE main" > "$dir/etc/apt/sources.list"
    # the host's own CA certificates (not secrets: public certificates), so TLS from inside behaves as on the host
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1 && [ -d "$dir/etc/ssl/certs" ]; then
        cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
        chroot "$dir" update-ca-certificates >/dev/null
    fi
    rm -rf "$dir/var/lib/apt/lists/"* "$dir/var/cache/apt/"*.bin "$dir/var/cache/apt/archives/"*.deb
}

python_image() {
PY="$WORK/python"
rootfs "$PY" python3.11,python3-pip,python3-venv,python-is-python3,ca-certificates
rm -f "$PY"/usr/lib/python3*/EXTERNALLY-MANAGED  # the official image has no such marker: `pip install` as root works
[ -e "$PY/usr/bin/pip" ] || ln -s pip3 "$PY/usr/bin/pip"
tar -C "$PY" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$PYTHON_TAG"
docker run --rm "$PYTHON_TAG" sh -c 'python --version && pip --version'
}

redis_image() {
RD="$WORK/redis"
rootfs "$RD" redis-server,redis-tools
# The official image compiles Redis with protected-mode off (no password, any interface: the compose network);
# Debian's is on and would refuse the other containers. A wrapper earlier on PATH says it before the caller's options
# (a config file, when given, must stay the first argument).
cat > "$RD/usr/local/bin/redis-server" <<'EOF'
#!/bin/sh
case "${1:-}" in -v|--version|-h|--help|--test-memory|--check-system) exec /usr/bin/redis-server "$@";; esac
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    conf=$1; shift
    exec /usr/bin/redis-server "$conf" --protected-mode no "$@"
fi
exec /usr/bin/redis-server --protected-mode no "$@"
EOF
chmod 755 "$RD/usr/local/bin/redis-server"
mkdir -p "$RD/data"
tar -C "$RD" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'WORKDIR /data' \
    --change 'VOLUME /data' \
    --change 'EXPOSE 6379' \
    --change 'CMD ["redis-server"]' \
    - "$REDIS_TAG"
docker run --rm "$REDIS_TAG" redis-server --version
}

case "$WHICH" in
    all) python_image; redis_image ;;
    python) python_image ;;
    redis) redis_image ;;
    *) echo "usage: $0 [all|python|redis]" >&2; exit 2 ;;
esac
