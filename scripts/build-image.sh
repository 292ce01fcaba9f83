#!/usr/bin/env bash
# Builds the container image the Helm chart runs: iotstamp:<version> (the workspace version, which
# is the chart's appVersion), from scratch, with no base image and so no registry:
#   /usr/local/bin/iotstamp   the release binary (operator, stamp, router: one binary)
#   its shared libraries      copied from this machine, as `ldd` lists them (glibc, libgcc_s, libm)
#   /etc/passwd, /etc/group   the user `nonroot`, uid/gid 65532, which the chart's pods run as
# Nothing else: no shell, no package manager. The root filesystem works read-only (the chart mounts
# an emptyDir at /tmp).
#
# Usage: scripts/build-image.sh [--binary PATH] [--tag NAME:TAG] [--save FILE.tar]
#   --binary  use this binary instead of building target/release/iotstamp
#   --tag     image name (default iotstamp:<version>)
#   --save    also write the image as a tarball, for `kind load image-archive` or `docker load`
# Ends by running the image as the chart runs it (read-only root, uid 65532, /tmp a tmpfs) and with
# no network: each command must answer `--help`, and `iotstamp up --demo` (a router and stamps on
# the container's loopback, devices provisioning and sending over TLS) must pass. A broken image
# fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }
step() { printf '==> %s\n' "$*" >&2; }

binary="" tag="" save=""
while (($#)); do
  case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --tag) tag=${2:?--tag needs NAME:TAG}; shift 2 ;;
    --save) save=${2:?--save needs a file}; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

command -v docker >/dev/null || die "docker is not installed (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "the docker daemon is not reachable ('docker info' fails); start it, e.g. 'dockerd &'"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[[ -n $version ]] || die "no version in Cargo.toml"
tag=${tag:-iotstamp:$version}

if [[ -z $binary ]]; then
  step "cargo build --release (the binary)"
  CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} cargo build --release -p iotstamp >&2
  binary="${CARGO_TARGET_DIR:-target}/release/iotstamp"
fi
[[ -x $binary ]] || die "$binary is not an executable"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
step "staging $binary and its libraries"
mkdir -p "$stage/rootfs/usr/local/bin" "$stage/rootfs/etc" "$stage/rootfs/tmp"
install -m 0755 "$binary" "$stage/rootfs/usr/local/bin/iotstamp"
# Every library the dynamic loader resolves, at the same path, plus the loader itself.
while read -r lib; do
  [[ -n $lib ]] || continue
  mkdir -p "$stage/rootfs$(dirname "$lib")"
  cp -L "$lib" "$stage/rootfs$lib"
done < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$stage/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$stage/rootfs/etc/group"
chmod 1777 "$stage/rootfs/tmp"
cat >"$stage/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/iotstamp"]
LABEL org.opencontainers.image.title="iotstamp" org.opencontainers.image.version="$version"
EOF

step "docker build -t $tag"
docker build --quiet -t "$tag" "$stage" >&2

step "checking the image: read-only root, uid 65532, no network"
run_image() {
  docker run --rm --read-only --user 65532:65532 --network none \
    --tmpfs /tmp:uid=65532,gid=65532 "$tag" "$@" 2>&1
}
for command in "" operator stamp router; do
  out=$(run_image $command --help) || die "'$tag $command --help' failed:
$out"
  grep -q '^Usage: iotstamp' <<<"$out" || die "'$tag $command --help' printed no usage:
$out"
done
step "checking the image: iotstamp up --demo inside it"
out=$(run_image up --demo) || die "'iotstamp up --demo' failed in $tag:
$out"
grep -q '^the demo passed' <<<"$out" || die "'iotstamp up --demo' did not pass in $tag:
$out"

if [[ -n $save ]]; then
  step "docker save -o $save"
  docker save -o "$save" "$tag"
fi
size=$(docker image inspect --format '{{.Size}}' "$tag")
printf '%s built: %s MB\n' "$tag" "$((size / 1000000))"
