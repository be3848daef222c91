#!/usr/bin/env bash
# Builds every container image the real-node tests run, with buildah and without any registry:
#   base             localhost/gvirtus-kai-base:bookworm, Debian bookworm (debootstrap minbase) with
#                    python3 and python3-venv; stays in the build store only
#   webhook controller labeler device-plugin backend-agent
#                    the service images, Dockerfile.<name> FROM the base
#   standin-backend standin-frontend           tests/node/images/*: stand-ins for GVirtuS
#   pause            localhost/pause:dev, Kubernetes' pause.c compiled static, FROM scratch
# Each image is written as a docker-archive (keeps its name for `ctr images import`) to
# OUT/<name>.tar, and OUT/sizes.json maps names to uncompressed bytes. An image is rebuilt only
# when the hash of its inputs changed (OUT/<name>.inputs holds the last one).
# usage: ci/images/build.sh [NAME...]        (default: all; base is built when a dependent needs it)
# env:   IMAGES_OUT (default .tools/images), IMAGES_STORE (buildah's storage, default
#        .tools/containers), DEBIAN_MIRROR (default: the machine's apt source for
#        bookworm), PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_TRUSTED_HOST / PIP_CERT (default: the
#        machine's pip configuration), passed to the builds only, never written into an image
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${IMAGES_OUT:-.tools/images}
store=$(realpath -m "${IMAGES_STORE:-.tools/containers}")
base_ref=localhost/gvirtus-kai-base:bookworm
services=(webhook controller labeler device-plugin backend-agent)
standins=(standin-backend standin-frontend)
all=(pause "${services[@]}" "${standins[@]}")
# The host CA bundle is mounted here for pip in the builder stages.
ca_in_build=/run/gvirtus-kai-pip-ca.pem

log() { printf '%s build.sh: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

ref_of() {
  case "$1" in
    pause) echo localhost/pause:dev ;;
    *) echo "localhost/gvirtus-kai-$1:dev" ;;
  esac
}

install_missing() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v gcc >/dev/null || missing+=(gcc)
  # pause is linked statically: glibc's static archive comes with libc6-dev.
  dpkg-query -W -f '${Status}' libc6-dev 2>/dev/null | grep -q 'ok installed' ||
    missing+=(libc6-dev)
  [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# First apt source that serves bookworm: deb822 files first, then one-line sources.
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local file uri
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -e "$file" ] || continue
    uri=$(awk '
      /^[[:space:]]*$/ { if (suite && uri && deb) exit; suite = 0; uri = ""; deb = 0; next }
      /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
      END { if (suite && uri && deb) print uri }
    ' "$file")
    if [ -n "$uri" ]; then
      echo "$uri"
      return
    fi
  done
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -e "$file" ] || continue
    uri=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' "$file")
    if [ -n "$uri" ]; then
      echo "$uri"
      return
    fi
  done
  echo "build.sh: no apt source for bookworm found; set DEBIAN_MIRROR" >&2
  return 1
}

# pip settings of this machine: the environment first, then pip's configuration files.
pip_setting() {
  local var=$1 key=$2
  if [ -n "${!var:-}" ]; then
    echo "${!var}"
    return
  fi
  sed -n -E "s/^(global|install|wheel)\.$key='(.*)'\$/\2/p" <<<"$pip_config" | tail -n 1
}

setup_store() {
  local driver
  mkdir -p "$store" "$out"
  if [ -s "$store/driver" ]; then
    driver=$(cat "$store/driver")
  else
    driver=overlay
    # overlay needs a kernel and file system that allow it; vfs always works, at more disk.
    if ! buildah --root "$store/overlay" --runroot "$store/run-overlay" --storage-driver overlay \
      from --name gvirtus-kai-probe scratch >/dev/null 2>&1 ||
      ! buildah --root "$store/overlay" --runroot "$store/run-overlay" --storage-driver overlay \
        mount gvirtus-kai-probe >/dev/null 2>&1; then
      driver=vfs
    fi
    buildah --root "$store/overlay" --runroot "$store/run-overlay" --storage-driver overlay \
      rm gvirtus-kai-probe >/dev/null 2>&1 || true
    echo "$driver" >"$store/driver"
  fi
  bah=(buildah --root "$store/$driver" --runroot "$store/run-$driver" --storage-driver "$driver")
  log "buildah store: $store/$driver"
}

have_image() { "${bah[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# sha256 over file names and contents (caches and build output left out, as .dockerignore does).
hash_inputs() {
  (($#)) || return 0
  {
    printf '%s\n' "$@"
    find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' \
      ! -path '*/build/*' ! -path '*/dist/*' ! -path '*/.mypy_cache/*' \
      ! -path '*/.ruff_cache/*' ! -path '*/.pytest_cache/*' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
}

inputs_of() {
  case "$1" in
    base) ;; # debootstrap's packages only: the recipe says which
    pause) echo ci/images/pause ci/tools/go.mod ;;
    standin-*) echo "tests/node/images/${1//-/_}" ;;
    *) echo "Dockerfile.$1" constraints.txt services/common "services/$1" ;;
  esac
}

# The code of this script that builds an image is an input too; the rest (logging, the
# up-to-date check) is not, so editing it rebuilds nothing.
recipe_of() {
  case "$1" in
    base) declare -f build_base ;;
    pause) declare -f build_pause ;;
    *) declare -f build_dockerfile pip_build_args ;;
  esac
  declare -f ref_of write_archive
}

input_hash() {
  # shellcheck disable=SC2046  # inputs_of prints paths without spaces
  { hash_inputs $(inputs_of "$1") && recipe_of "$1"; } | sha256sum | cut -d' ' -f1
}

up_to_date() {
  local name=$1 hash=$2
  [ -f "$out/$name.inputs" ] && [ "$(cat "$out/$name.inputs")" = "$hash" ] || return 1
  if [ "$name" = base ]; then have_image "$base_ref"; else [ -f "$out/$name.tar" ]; fi
}

build_base() {
  local work=$out/work/base mirror
  mirror=$(debian_mirror)
  rm -rf "$work"
  mkdir -p "$work"
  log "base: debootstrap minbase bookworm"
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    return 1
  }
  local root=$work/rootfs
  # Nothing of the build machine stays in the image (its apt source, resolver, host name), nor
  # what no container here reads: package lists and caches, documentation, translations.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/* "$root"/etc/apt/sources.list "$root"/etc/resolv.conf "$root"/etc/hostname
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  tar --numeric-owner -C "$root" -cf "$work/rootfs.tar" .
  local ctr
  ctr=$("${bah[@]}" from scratch)
  "${bah[@]}" add "$ctr" "$work/rootfs.tar" / >/dev/null
  "${bah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd '["/bin/sh"]' \
    --label org.opencontainers.image.title=gvirtus-kai-base \
    --label "org.opencontainers.image.description=Debian bookworm minbase with python3" "$ctr"
  "${bah[@]}" commit --quiet --rm "$ctr" "$base_ref" >/dev/null
  rm -rf "$work"
}

build_pause() {
  local work=$out/work/pause module
  # The k8s.io/kubernetes version pinned for the control plane: its own pause.c.
  module=$(cd ci/tools && go mod download k8s.io/kubernetes &&
    go list -m -f '{{.Dir}} {{.Version}}' k8s.io/kubernetes)
  rm -rf "$work"
  mkdir -p "$work"
  gcc -static -O2 -Wall -Werror -DVERSION="${module#* }" -o "$work/pause" \
    "${module% *}/build/pause/linux/pause.c"
  strip "$work/pause"
  cp ci/images/pause/Dockerfile "$work/"
  "${bah[@]}" build --quiet --pull=never --network none -t "$(ref_of pause)" "$work" >/dev/null
  rm -rf "$work"
}

pip_build_args() {
  local value ca
  pip_config=$(python3 -m pip config list 2>/dev/null || true)
  pip_args=()
  local name key
  for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST; do
    key=${name#PIP_}
    key=${key,,}
    key=${key//_/-} # pip's config key for the variable, e.g. index-url
    value=$(pip_setting "$name" "$key")
    if [ -n "$value" ]; then pip_args+=(--build-arg "$name=$value"); fi
  done
  ca=$(pip_setting PIP_CERT cert)
  if [ -n "$ca" ] && [ -f "$ca" ]; then
    pip_args+=(--volume "$(realpath "$ca"):$ca_in_build:ro" --build-arg "PIP_CERT=$ca_in_build")
  fi
}

build_dockerfile() {
  local name=$1 dockerfile context
  [ -v pip_args ] || pip_build_args
  case "$name" in
    standin-*)
      context=tests/node/images/${name//-/_}
      dockerfile=$context/Dockerfile
      ;;
    *)
      context=.
      dockerfile=Dockerfile.$name
      ;;
  esac
  "${bah[@]}" build --quiet --pull=never --network host --layers=false \
    --build-arg "PYTHON_IMAGE=$base_ref" --build-arg "BASE_IMAGE=$base_ref" "${pip_args[@]}" \
    -f "$dockerfile" -t "$(ref_of "$name")" "$context" >/dev/null
}

write_archive() {
  local name=$1 ref
  ref=$(ref_of "$name")
  rm -f "$out/$name.tar.new"
  "${bah[@]}" push --quiet "$ref" "docker-archive:$out/$name.tar.new:$ref" >/dev/null
  mv "$out/$name.tar.new" "$out/$name.tar"
}

write_sizes() {
  local name ref first=1
  {
    echo "{"
    for name in "${all[@]}"; do
      [ -f "$out/$name.tar" ] || continue
      ref=$(ref_of "$name")
      # Uncompressed size: the layer tars in the archive (docker-archive stores them as is).
      size=$(tar -tvf "$out/$name.tar" | awk '$NF ~ /\.tar$/ || $NF ~ /^[0-9a-f]{64}$/ { s += $3 }
        END { print s + 0 }')
      if ((first)); then first=0; else echo ","; fi
      printf '  "%s": %s' "$name" "$size"
    done
    printf '\n}\n'
  } >"$out/sizes.json"
}

ensure_base() {
  if up_to_date base "$base_hash"; then return; fi
  local started=$SECONDS
  build_base
  echo "$base_hash" >"$out/base.inputs"
  log "base: built $base_ref in $((SECONDS - started))s"
}

main() {
  local wanted=("$@") name hash started built=0
  ((${#wanted[@]})) || wanted=("${all[@]}")
  for name in "${wanted[@]}"; do
    if [[ " base ${all[*]} " != *" $name "* ]]; then
      echo "build.sh: unknown image $name (one of: base ${all[*]})" >&2
      exit 2
    fi
  done
  install_missing
  setup_store
  # One build at a time: a second caller waits, then finds the images up to date.
  exec 9>"$out/.lock"
  flock 9
  base_hash=$(input_hash base)
  for name in "${wanted[@]}"; do
    if [ "$name" = base ]; then
      ensure_base
      continue
    fi
    hash=$(input_hash "$name")
    # Images FROM the base are rebuilt when the base's recipe changes.
    [ "$name" = pause ] || hash=$(echo "$hash $base_hash" | sha256sum | cut -d' ' -f1)
    if up_to_date "$name" "$hash"; then
      log "$name: up to date"
      continue
    fi
    [ "$name" = pause ] || ensure_base
    started=$SECONDS
    if [ "$name" = pause ]; then build_pause; else build_dockerfile "$name"; fi
    write_archive "$name"
    echo "$hash" >"$out/$name.inputs"
    log "$name: built $(ref_of "$name") in $((SECONDS - started))s"
    built=1
  done
  # A rebuilt image leaves its previous version untagged in the store.
  if ((built)); then "${bah[@]}" rmi --prune >/dev/null 2>&1 || true; fi
  write_sizes
  log "sizes (uncompressed):"
  sed -n -E 's/^  "([^"]+)": ([0-9]+).*/\1 \2/p' "$out/sizes.json" |
    awk '{ printf "  %-18s %6.1f MB\n", $1, $2 / 1e6 }' >&2
}

main "$@"
