#!/usr/bin/env bash
# Builds and pushes the project's images with one tag:
#   REGISTRY/effdet-train:TAG   (images/Dockerfile.train, NGC TensorFlow + Horovod + sshd)
#   REGISTRY/effdet-cpu:TAG     (images/Dockerfile.cpu, components and the launcher step)
#   REGISTRY/effdet-mlflow:TAG  (images/Dockerfile.mlflow, the tracking server)
# The registry comes from --registry or EFFDET_REGISTRY, the tag from --tag or EFFDET_IMAGE_TAG
# (default: the package version plus the git commit). `latest` is refused: manifests pin tags.
# --dry-run prints the commands instead of running them (no Docker engine needed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${DOCKER:-docker}"
ALL_IMAGES=(train cpu mlflow)

usage() {
  cat <<EOF
usage: $(basename "$0") [--registry REGISTRY] [--tag TAG] [--only train,cpu,mlflow]
                        [--build-arg NAME=VALUE]... [--no-push] [--dry-run]
  --registry   registry and path prefix, e.g. ghcr.io/acme/effdet (env EFFDET_REGISTRY)
  --tag        image tag (env EFFDET_IMAGE_TAG; default <version>-<git short sha>)
  --only       comma-separated subset of: ${ALL_IMAGES[*]}
  --build-arg  passed to every build (e.g. BASE_IMAGE=...@sha256:... to pin a digest)
  --no-push    build only
  --dry-run    print the docker commands instead of running them
EOF
}

die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 2; }

registry="${EFFDET_REGISTRY:-}"
tag="${EFFDET_IMAGE_TAG:-}"
only=""
push=1
dry_run=0
build_args=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --registry) [[ $# -ge 2 ]] || die "--registry needs a value"; registry="$2"; shift 2 ;;
    --registry=*) registry="${1#*=}"; shift ;;
    --tag) [[ $# -ge 2 ]] || die "--tag needs a value"; tag="$2"; shift 2 ;;
    --tag=*) tag="${1#*=}"; shift ;;
    --only) [[ $# -ge 2 ]] || die "--only needs a value"; only="$2"; shift 2 ;;
    --only=*) only="${1#*=}"; shift ;;
    --build-arg) [[ $# -ge 2 ]] || die "--build-arg needs NAME=VALUE"; build_args+=("$2"); shift 2 ;;
    --build-arg=*) build_args+=("${1#*=}"); shift ;;
    --no-push) push=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n "$registry" ]] || die "no registry: pass --registry REGISTRY or set EFFDET_REGISTRY"
registry="${registry%/}"
[[ "$registry" =~ ^[a-z0-9]([a-z0-9._:-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$ ]] \
  || die "registry '$registry' is not a valid image repository prefix (lowercase host[:port]/path)"

if [[ -z "$tag" ]]; then
  version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)"
  sha="$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || true)"
  [[ -n "$version" ]] || die "cannot read the version from pyproject.toml; pass --tag"
  tag="${version}${sha:+-$sha}"
fi
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "tag '$tag' is not a valid image tag"
[[ "$tag" != "latest" ]] || die "tag 'latest' is refused: the manifests pin explicit tags"

selected=("${ALL_IMAGES[@]}")
if [[ -n "$only" ]]; then
  IFS=',' read -r -a selected <<<"$only"
  for name in "${selected[@]}"; do
    [[ " ${ALL_IMAGES[*]} " == *" $name "* ]] || die "--only: unknown image '$name' (choose from ${ALL_IMAGES[*]})"
  done
fi
for arg in "${build_args[@]+"${build_args[@]}"}"; do
  [[ "$arg" == *=* ]] || die "--build-arg '$arg' is not NAME=VALUE"
done

run() {
  if [[ $dry_run -eq 1 ]]; then
    printf '%q ' "$@" | sed 's/ $//'
    printf '\n'
  else
    "$@"
  fi
}

commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)"
refs=()
for name in "${selected[@]}"; do
  ref="$registry/effdet-$name:$tag"
  cmd=("$DOCKER" build --file "$ROOT/images/Dockerfile.$name" --tag "$ref"
       --label "org.opencontainers.image.version=$tag"
       --label "org.opencontainers.image.source=efficientdet")
  for arg in "${build_args[@]+"${build_args[@]}"}"; do
    cmd+=(--build-arg "$arg")
  done
  if [[ -n "$commit" && "$name" != mlflow ]]; then
    cmd+=(--build-arg "EFFDET_GIT_COMMIT=$commit")  # the runs' mlflow.source.git.commit
  fi
  cmd+=("$ROOT")
  run "${cmd[@]}"
  if [[ $push -eq 1 ]]; then
    run "$DOCKER" push "$ref"
  fi
  refs+=("$ref")
done

if [[ $dry_run -eq 0 ]]; then
  printf 'built%s:\n' "$([[ $push -eq 1 ]] && echo ' and pushed')" >&2
  printf '  %s\n' "${refs[@]}" >&2
  printf 'point the manifests at them: cd manifests/overlays/<overlay> && kustomize edit set image ...\n' >&2
fi
