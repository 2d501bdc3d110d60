#!/usr/bin/env bash
# Build the projector image (deploy/container/Dockerfile) with podman.
#
#   deploy/container/build.sh [--tag NAME] [--base IMAGE | --debootstrap]
#
# The base image (the Dockerfile's BASE build argument), first that applies:
#   --base IMAGE or $PROJECTOR_BASE_IMAGE;
#   python:3.11-slim, when it is present locally or Docker Hub answers;
#   else (--debootstrap forces it) a minimal Debian bookworm with its python3 (3.11) and venv module, made here with
#   debootstrap from deb.debian.org and imported as localhost/projector-base:bookworm (kept for the next build).
# Run as root, it installs podman (and debootstrap, when needed) with apt-get if they are missing.
# The build reaches PyPI; it uses this machine's CA certificates, so a TLS proxy this machine trusts works too.
# Where podman's defaults cannot start a container (crun on hybrid cgroups, or no CAP_SYS_RESOURCE to raise
# rlimits, as in some VMs and CI sandboxes), it writes deploy/container/.podman/containers.conf (runc, this shell's
# limits) and uses it.
# Prints shell lines on stdout: export IMAGE=..., and export CONTAINERS_CONF=... when that file is needed; so
#   eval "$(deploy/container/build.sh)" && podman run --rm --network host "$IMAGE"
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
TAG="localhost/projector:latest"
BASE="${PROJECTOR_BASE_IMAGE:-}"
DEBOOTSTRAP=0
OFFICIAL="docker.io/library/python:3.11-slim"
DEBIAN_BASE="localhost/projector-base:bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --base) BASE="$2"; shift 2 ;;
        --debootstrap) DEBOOTSTRAP=1; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "build.sh: $*" >&2; }

need() {  # need COMMAND PACKAGE: install PACKAGE with apt-get when COMMAND is missing and we may
    command -v "$1" >/dev/null 2>&1 && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing $2 with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2; }
    fi
    command -v "$1" >/dev/null 2>&1 || { log "$1 is missing: install the $2 package"; exit 1; }
}

have_image() { podman image exists "$1" 2>/dev/null; }

registry_answers() {  # any HTTP answer from Docker Hub (401 included) means pulls can work
    command -v curl >/dev/null 2>&1 || return 0
    local code
    code="$(curl -s -o /dev/null -m 10 -w '%{http_code}' https://registry-1.docker.io/v2/ || true)"
    [[ "$code" != "000" ]]
}

debian_base() {  # a minimal bookworm with python3 and its venv module, imported as $DEBIAN_BASE
    if have_image "$DEBIAN_BASE"; then
        log "using $DEBIAN_BASE (made earlier; podman rmi it to make it again)"
        return 0
    fi
    need debootstrap debootstrap
    local root
    root="$(mktemp -d "${TMPDIR:-/tmp}/projector-base.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" EXIT
    log "debootstrap bookworm into $root from $MIRROR (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$MIRROR" >&2
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar --numeric-owner -C "$root" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$DEBIAN_BASE" >&2
    rm -rf "$root"
    trap - EXIT
}

starts() {  # starts IMAGE: whether podman can run a container of IMAGE here
    podman run --rm --network host --pull=never "$1" true >/dev/null 2>"$REPO/deploy/container/.podman/probe.err"
}

podman_conf() {  # a containers.conf for machines where podman's defaults cannot start a container
    local conf="$REPO/deploy/container/.podman/containers.conf" nofile nproc
    starts "$1" && return 0
    log "podman cannot start a container with its defaults: $(tail -1 "$REPO/deploy/container/.podman/probe.err")"
    need runc runc
    nofile="$(ulimit -Hn)"; [[ "$nofile" == unlimited ]] && nofile=65536
    nproc="$(ulimit -Hu)"; [[ "$nproc" == unlimited || "$nproc" -gt 4096 ]] && nproc=4096
    cat > "$conf" <<CONF
# Written by deploy/container/build.sh: podman's defaults could not start a container on this machine.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF="$conf"
    if ! starts "$1"; then
        log "podman cannot start a container with $conf either: $(tail -1 "$REPO/deploy/container/.podman/probe.err")"
        exit 1
    fi
    log "using $conf (runc; nofile $nofile, nproc $nproc): export CONTAINERS_CONF=$conf for podman run"
}

need podman podman
mkdir -p "$REPO/deploy/container/.podman"

if [[ -z "$BASE" ]]; then
    if [[ $DEBOOTSTRAP -eq 0 ]] && { have_image "$OFFICIAL" || registry_answers; }; then
        BASE="$OFFICIAL"
    else
        [[ $DEBOOTSTRAP -eq 1 ]] || log "no registry answers: making a Debian base with debootstrap"
        debian_base
        BASE="$DEBIAN_BASE"
    fi
fi

have_image "$BASE" || podman pull "$BASE" >&2
podman_conf "$BASE"
mounts=()
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    mounts=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
log "building $TAG on $BASE"
# --format docker: the OCI format has no HEALTHCHECK, podman would drop it.
podman build --format docker --network host --pull=never "${mounts[@]}" \
    --build-arg "BASE=$BASE" -f "$REPO/deploy/container/Dockerfile" -t "$TAG" "$REPO" >&2
echo "export IMAGE=$TAG"
if [[ -n "${CONTAINERS_CONF:-}" ]]; then
    echo "export CONTAINERS_CONF=$CONTAINERS_CONF"
fi
