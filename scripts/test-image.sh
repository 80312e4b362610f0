#!/usr/bin/env bash
# The image test: builds deploy/Dockerfile (and the Dockerfile of a project
# made by `modalkit new`) with buildah on a machine with no container
# registry, then runs each image's entrypoint as the image's user, with the
# image's environment, on loopback: /ready 200, /predict_sync answers,
# SIGTERM drains and exits 0, and the paths docs/deploy-modal.md documents
# are where it says. Prints image sizes, the cold build time, the rebuild
# time after a one-line change to the pipeline, start-to-ready and the
# SIGTERM drain. Not part of CI (a cold release build is longer than CI's
# budget allows): run it before every release.
#
# No registry: the base images are made here and passed as build args (the
# Dockerfiles keep the real rust:/debian: images as their defaults):
#   localhost/modalkit-base-debian:bookworm  Debian's packages by debootstrap
#   localhost/modalkit-base-rust:1.95        the same, plus gcc, this
#                                            machine's Rust toolchain and its
#                                            CA certificates
# Both are made once and kept in buildah's storage. Builds use
# `buildah bud --isolation chroot --layers` (podman's OCI runtime cannot set
# rlimits here); the layer cache is what makes the rebuild fast.
#
# Usage: scripts/test-image.sh [repo|project|all|bases]   (default all;
#        bases: only make the base images)
# Env:   COLD=1   build the repo image without the layer cache (cold time)
# Log:   target/image-test/log.txt
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
what=${1:-all}
work=$root/target/image-test
mkdir -p "$work"
log=$work/log.txt
: > "$log"
say() { echo "image-test: $*" | tee -a "$log"; }

install_tools() {
  if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq && apt-get install -y -qq buildah debootstrap >/dev/null
  fi
}

has_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# --- base images -------------------------------------------------------------
debian_base=localhost/modalkit-base-debian:bookworm
rust_base=localhost/modalkit-base-rust:1.95
make_bases() {
  if ! has_image "$debian_base"; then
    local rootfs=$work/rootfs-bookworm
    rm -rf "$rootfs"
    say "debootstrap bookworm (minbase)"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$work/rootfs.tar" .
    local ctr
    ctr=$(buildah from scratch)
    buildah add "$ctr" "$work/rootfs.tar" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
    buildah commit -q "$ctr" "$debian_base" >/dev/null
    buildah rm "$ctr" >/dev/null
    rm -rf "$rootfs" "$work/rootfs.tar"
  fi
  if ! has_image "$rust_base"; then
    local toolchain ctr
    toolchain=$(rustc --print sysroot)
    say "rust base from $debian_base and $toolchain"
    ctr=$(buildah from "$debian_base")
    buildah run --isolation chroot "$ctr" -- sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*'
    # This machine's own CA certificates (where its egress passes a TLS
    # proxy, crates.io is reached through it), as the real rust: image has
    # the public ones.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
      for cert in /usr/local/share/ca-certificates/*.crt; do
        buildah copy "$ctr" "$cert" /usr/local/share/ca-certificates/ >/dev/null
      done
      buildah run --isolation chroot "$ctr" -- update-ca-certificates >/dev/null 2>&1
    fi
    for part in bin lib libexec; do
      [ -d "$toolchain/$part" ] && buildah copy "$ctr" "$toolchain/$part" "/usr/local/rust/$part" >/dev/null
    done
    buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
      --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah commit -q "$ctr" "$rust_base" >/dev/null
    buildah rm "$ctr" >/dev/null
  fi
  say "base images: $(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep modalkit-base | tr '\n' ';')"
}

# Copies the working tree's files (tracked and untracked, not ignored) to $1.
copy_tree() {
  rm -rf "$1" && mkdir -p "$1"
  git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -C "$1" -xf -
}

# build CONTEXT DOCKERFILE TAG [extra buildah args]: prints the seconds taken.
build() {
  local context=$1 dockerfile=$2 tag=$3
  shift 3
  local started=$SECONDS
  buildah bud --isolation chroot --layers -q -f "$dockerfile" \
    --build-arg RUST_IMAGE="${build_rust_image:-$rust_base}" --build-arg RUNTIME_IMAGE="$debian_base" \
    -t "$tag" "$@" "$context" >>"$work/build.log" 2>&1 || {
      tail -n 40 "$work/build.log" >&2
      echo "image-test: build of $tag failed (log: $work/build.log)" >&2
      exit 1
    }
  echo $((SECONDS - started))
}

# run_image TAG NAME BODY EXPECT: starts the entrypoint as the image's user with
# the image's environment and working directory, checks it, stops it.
run_image() {
  local tag=$1 name=$2 body=$3 expect=$4
  local ctr mnt user workdir port pid
  ctr=$(buildah from "$tag")
  mnt=$(buildah mount "$ctr")
  user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$tag")
  workdir=$(buildah inspect --type image --format '{{.OCIv1.Config.WorkingDir}}' "$tag")
  mapfile -t env < <(buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$tag" | sed '/^$/d')
  mapfile -t command < <(buildah inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}{{range .OCIv1.Config.Cmd}}{{println .}}{{end}}' "$tag" | sed '/^$/d')
  for path in /usr/local/bin/modalkit-server /app/modalkit.yaml; do
    [ -e "$mnt$path" ] || { echo "image-test: $name: $path missing from the image" >&2; exit 1; }
    grep -q "$path" docs/deploy-modal.md || { echo "image-test: docs/deploy-modal.md does not document $path" >&2; exit 1; }
  done
  grep -q "MODALKIT_CONFIG=/app/modalkit.yaml" <(printf '%s\n' "${env[@]}") \
    || { echo "image-test: $name: MODALKIT_CONFIG is not /app/modalkit.yaml" >&2; exit 1; }
  mount --bind /dev "$mnt/dev" && mount -t proc proc "$mnt/proc"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # The image's environment, and the port Modal would not need to change.
  env+=("MODALKIT_PORT=$port")
  local started
  started=$(date +%s.%N)
  (cd /; exec chroot --userspec="$user" "$mnt" /usr/bin/env -i "${env[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$workdir" "${command[@]}") \
    >"$work/$name.server.log" 2>&1 &
  pid=$!
  local ready=""
  for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then ready=yes; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  local to_ready
  to_ready=$(python3 -c "import time; print(f'{time.time() - $started:.2f}')")
  [ -n "$ready" ] || { cat "$work/$name.server.log" >&2; echo "image-test: $name never became ready" >&2; exit 1; }
  local uid
  uid=$(awk '/^Uid:/ { print $2 }' "/proc/$(pgrep -P "$pid" || echo "$pid")/status" 2>/dev/null || echo "?")
  local reply
  reply=$(curl -sf "http://127.0.0.1:$port/predict_sync" -H 'content-type: application/json' -d "$body")
  grep -q "$expect" <<<"$reply" || { echo "image-test: $name: /predict_sync answered $reply" >&2; exit 1; }
  local term_at code
  term_at=$(date +%s.%N)
  kill -TERM "$(pgrep -P "$pid" || echo "$pid")" 2>/dev/null || kill -TERM "$pid"
  set +e; wait "$pid"; code=$?; set -e
  local drain
  drain=$(python3 -c "import time; print(f'{time.time() - $term_at:.2f}')")
  umount "$mnt/proc" "$mnt/dev" || true
  buildah umount "$ctr" >/dev/null; buildah rm "$ctr" >/dev/null
  [ "$code" = 0 ] || { cat "$work/$name.server.log" >&2; echo "image-test: $name exited $code after SIGTERM" >&2; exit 1; }
  say "$name: user $user (uid $uid), workdir $workdir, start to ready ${to_ready}s, /predict_sync ok, SIGTERM drain ${drain}s, exit 0"
}

size_of() { buildah images --format '{{.Size}}' "$1" | head -n 1; }

test_repo() {
  local context=$work/repo
  copy_tree "$context"
  local cold_args=()
  [ "${COLD:-0}" = 1 ] && cold_args=(--no-cache)
  local cold
  cold=$(build "$context" "$context/deploy/Dockerfile" localhost/modalkit-translate:test "${cold_args[@]}")
  say "repo image (translate): built in ${cold}s$([ "${COLD:-0}" = 1 ] && echo ' (cold, no layer cache)'), size $(size_of localhost/modalkit-translate:test)"
  # A one-line change to the pipeline: only the project's crates rebuild.
  sed -i 's/nothing to translate: the text is only whitespace/nothing to translate: the text is whitespace only/' "$context/examples/src/translate.rs"
  local rebuild
  rebuild=$(build "$context" "$context/deploy/Dockerfile" localhost/modalkit-translate:test)
  say "repo image: rebuilt after a one-line change to examples/src/translate.rs in ${rebuild}s"
  run_image localhost/modalkit-translate:test translate '{"text": "hello image"}' '"translated_text":"HELLO IMAGE"'
}

# The packed crates standing in for crates.io: until they are published, a
# project that depends on `modalkit-rs = "0.1"` cannot resolve it from the
# registry. scripts/package.sh packs them exactly as `cargo publish` would
# upload them; they are unpacked into a layer on the Rust base image and named
# in its Cargo config as [patch.crates-io], so the project, its Dockerfile
# and its lock file stay as a user's, and every other crate still comes from
# crates.io. Sets $crates_base (the image) and $patch_config (the same patch
# for cargo on this machine, pointing at the unpacked copies here).
make_crates_base() {
  scripts/package.sh --no-verify >>"$work/build.log" 2>&1
  local unpacked=$work/local-crates
  rm -rf "$unpacked" && mkdir -p "$unpacked"
  local host_config=$work/local-crates.toml image_config=$work/image-cargo-config.toml
  echo "[patch.crates-io]" >"$host_config"
  echo "[patch.crates-io]" >"$image_config"
  local crate base name
  for crate in target/package/*.crate; do
    base=$(basename "$crate" .crate)
    name=$(sed -E 's/-[0-9]+\.[0-9]+\.[0-9]+.*$//' <<<"$base")
    tar -C "$unpacked" -xzf "$crate"
    echo "$name = { path = \"$unpacked/$base\" }" >>"$host_config"
    echo "$name = { path = \"/opt/modalkit-crates/$base\" }" >>"$image_config"
  done
  crates_base=localhost/modalkit-base-rust-local-crates:test
  local ctr
  ctr=$(buildah from "$rust_base")
  buildah copy "$ctr" "$unpacked" /opt/modalkit-crates >/dev/null
  buildah copy "$ctr" "$image_config" /usr/local/cargo/config.toml >/dev/null
  buildah commit -q "$ctr" "$crates_base" >/dev/null
  buildah rm "$ctr" >/dev/null
  patch_config=$host_config
  say "crates.io stand-in: $(ls target/package/*.crate | xargs -n1 basename | tr '\n' ' ')"
}

test_project() {
  make_crates_base
  # A project made by `modalkit new` as a user makes it: it depends on the
  # registry's modalkit-rs. Its lock file is the workspace's, adjusted by
  # cargo to the project (the dependency versions this checkout tested).
  local project=$work/review-model
  rm -rf "$project"
  cargo run -q --locked -p modalkit-rs --bin modalkit -- new "$project" >/dev/null
  grep -q '^modalkit-rs = "' "$project/Cargo.toml" \
    || { echo "image-test: the project does not depend on the registry's modalkit-rs" >&2; exit 1; }
  cp Cargo.lock "$project/Cargo.lock"
  (cd "$project" && cargo metadata --format-version 1 --config "$patch_config" >/dev/null)
  local took
  took=$(build_rust_image=$crates_base build "$project" "$project/Dockerfile" localhost/modalkit-review-model:test)
  say "modalkit new project image: built in ${took}s, size $(size_of localhost/modalkit-review-model:test)"
  run_image localhost/modalkit-review-model:test review-model \
    '{"text": "a fine review of at least fifty characters, for sure"}' '"label":"positive"'
}

install_tools
make_bases
case "$what" in
  repo) test_repo ;;
  project) test_project ;;
  all) test_repo; test_project ;;
  bases) ;;
  *) echo "usage: scripts/test-image.sh [repo|project|all|bases]" >&2; exit 2 ;;
esac
say "OK"
