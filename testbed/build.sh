#!/usr/bin/env bash
# Builds the test bed's binaries from Go modules and caches them by version:
#   kube-apiserver and kubectl from k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3.
# Also fetches the KubeRay module whose CRDs the harness installs at run time, and unpacks
# Helm from helm.sh/helm/v4 (environments rendered from charts; kustomize is `kubectl kustomize`),
# Debian's OpenSSH server (not installed: no service starts) for the SSH transport tests, and
# installs Debian's chromium + chromium-driver (root) for the status page's browser tests.
#
# Usage: testbed/build.sh            build what is missing, print where everything is
#        TESTBED_DIR=... testbed/build.sh
# Binaries land in $TESTBED_DIR/bin/<name>-<version> (default .testbed/ at the repo root,
# git-ignored). A second run finds them and builds nothing. Go's own module and build caches
# (GOMODCACHE, GOCACHE) make a rebuild after a version bump incremental.
#
# Three lanes run at once, each one step after another: kube-apiserver + kubectl; the KubeRay
# operator, then Gitea; and the Debian packages (apt takes one lock, so they share a lane), then
# Ray's venv (a download, like them), then etcd. On 2 cores one Go build leaves a core idle during module downloads, links and cgo's
# C compile; a second lane fills those gaps. Each step's time goes to $TESTBED_DIR/build-times.tsv
# (step, seconds; the CI summary reads it). One build runs at a time per TESTBED_DIR: a second
# caller (a pytest worker, `make demo`) waits on the lock and then finds everything built.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KUBERAY_VERSION="${KUBERAY_VERSION:-v1.5.0}"
GITEA_VERSION="${GITEA_VERSION:-v1.25.5}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
RAY_VERSION="${RAY_VERSION:-2.60.0}"
HELM_VERSION="${HELM_VERSION:-v4.3.2}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${TESTBED_DIR:-$root/.testbed}"
mkdir -p "$dir/bin" "$dir/src"
exec 9>"$dir/.build.lock"
flock 9
times="$dir/build-times.tsv"
: > "$times"
# The wrapper modules' go directive must not make Go fetch another toolchain.
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf 'testbed: %s\n' "$*" >&2; }

# step NAME FUNCTION: runs FUNCTION and records its seconds (0 when it found its output cached).
step() {
  local start=$SECONDS
  "$2"
  printf '%s\t%s\n' "$1" "$((SECONDS - start))" >> "$times"
}

# The staging modules k8s.io/kubernetes replaces with ./staging/src/k8s.io/<name>; outside
# the kubernetes repo each must come from its published v0.<minor>.<patch> tag instead.
# The list is read from the go.mod the module proxy serves, never written down here.
kube_staging_replaces() {
  local gomod staging_version
  gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  staging_version="v0.${KUBE_VERSION#v1.}"
  awk -v ver="$staging_version" '
    /^replace \(/ { inblock = 1; next }
    inblock && /^\)/ { inblock = 0; next }
    inblock && $3 ~ /^\.\/staging\/src\// { printf "replace %s => %s %s\n", $1, $1, ver }
  ' "$gomod"
}

build_kube() {
  local apiserver="$dir/bin/kube-apiserver-$KUBE_VERSION" kubectl="$dir/bin/kubectl-$KUBE_VERSION"
  [[ -x "$apiserver" && -x "$kubectl" ]] && return 0
  local src="$dir/src/kube-$KUBE_VERSION" start=$SECONDS
  rm -rf "$src" && mkdir -p "$src"
  local replaces
  replaces="$(kube_staging_replaces)"
  [[ -n "$replaces" ]] || { log "no staging replace directives found in k8s.io/kubernetes@$KUBE_VERSION go.mod"; exit 1; }
  {
    echo "module gitsync.local/testbed/kube"
    echo
    echo "go 1.25.0"
    echo
    echo "$replaces"
  } > "$src/go.mod"
  log "resolving k8s.io/kubernetes@$KUBE_VERSION ($(wc -l <<<"$replaces") staging modules pinned)"
  (cd "$src" && go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" "k8s.io/kubernetes/cmd/kubectl@$KUBE_VERSION")
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  log "building kube-apiserver and kubectl $KUBE_VERSION (cold: about 12 minutes on 2 cores)"
  # One invocation for both: their shared packages (client-go, apimachinery …) compile once and
  # the two links run side by side.
  rm -rf "$src/out" && mkdir -p "$src/out"
  (cd "$src" && go build -trimpath -ldflags "-s -w$ld" -o "$src/out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl)
  mv "$src/out/kube-apiserver" "$apiserver"
  mv "$src/out/kubectl" "$kubectl"
  log "built kube-apiserver and kubectl in $((SECONDS - start)) s"
}

build_etcd() {
  local etcd="$dir/bin/etcd-$ETCD_VERSION"
  [[ -x "$etcd" ]] && return 0
  local src="$dir/src/etcd-$ETCD_VERSION" start=$SECONDS
  rm -rf "$src" && mkdir -p "$src"
  # etcd's own main package lives in the repository's root module; the server module
  # exports the same entry point as etcdmain.Main, which a three-line main calls.
  cat > "$src/go.mod" <<MOD
module gitsync.local/testbed/etcd

go 1.26.0
MOD
  cat > "$src/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  log "building etcd $ETCD_VERSION"
  (cd "$src" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy \
    && go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=gitsync-testbed" -o "$etcd.tmp" .)
  mv "$etcd.tmp" "$etcd"
  log "built etcd in $((SECONDS - start)) s"
}

# sshd from Debian's openssh-server package, unpacked into the cache with dpkg-deb, plus the
# one library it needs that a base system lacks (libwrap0). Nothing is installed or started
# system-wide; the test harness runs this sshd on a loopback port with throwaway keys.
fetch_sshd() {
  local dest="$dir/openssh"
  [[ -x "$dest/usr/sbin/sshd" ]] && return 0
  local tmp; tmp="$(mktemp -d)"
  log "fetching openssh-server and libwrap0 from Debian (unpacked, not installed)"
  if ! (cd "$tmp" && apt-get download openssh-server libwrap0 >/dev/null 2>&1); then
    apt-get update -qq >/dev/null
    (cd "$tmp" && apt-get download openssh-server libwrap0 >/dev/null)
  fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dest.tmp"; done
  rm -rf "$tmp" "$dest" && mv "$dest.tmp" "$dest"
}

# The real KubeRay operator, from its module (its go.mod has no replace directives).
build_kuberay_operator() {
  local operator="$dir/bin/kuberay-operator-$KUBERAY_VERSION"
  [[ -x "$operator" ]] && return 0
  local src="$dir/src/kuberay-$KUBERAY_VERSION" start=$SECONDS
  rm -rf "$src" && mkdir -p "$src"
  printf 'module gitsync.local/testbed/kuberay\n\ngo 1.25.0\n' > "$src/go.mod"
  log "building the KubeRay operator $KUBERAY_VERSION"
  (cd "$src" && go get "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" \
    && go build -trimpath -ldflags "-s -w" -o "$operator.tmp" github.com/ray-project/kuberay/ray-operator)
  mv "$operator.tmp" "$operator"
  log "built the KubeRay operator in $((SECONDS - start)) s"
}

# Gitea, the forge for commit statuses, pull requests and webhooks. Its go.mod carries replace
# directives, which only apply when building inside the module itself, so the build runs in a
# writable copy of the module. Tags: SQLite (cgo) without bindata, so templates and options are
# read from disk: the harness points STATIC_ROOT_PATH at this copy.
build_gitea() {
  local gitea="$dir/bin/gitea-$GITEA_VERSION" src="$dir/src/gitea-$GITEA_VERSION"
  [[ -x "$gitea" && -d "$src/templates" ]] && return 0
  local start=$SECONDS moddir
  moddir="$(go mod download -json "code.gitea.io/gitea@$GITEA_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$src" && cp -r "$moddir" "$src" && chmod -R u+w "$src"
  log "building Gitea $GITEA_VERSION (cold: about 8 minutes on 2 cores)"
  (cd "$src" && CGO_ENABLED=1 GOFLAGS= go build -trimpath -tags 'sqlite sqlite_unlock_notify' \
    -ldflags "-s -w -X main.Version=${GITEA_VERSION#v} -X main.Tags=sqlite,sqlite_unlock_notify" \
    -o "$gitea.tmp" .)
  mv "$gitea.tmp" "$gitea"
  log "built Gitea in $((SECONDS - start)) s"
}

# Helm v4 for environments that render a chart (`helm template`). Its go.mod has no replace
# directives, so it builds from the module like the KubeRay operator. Kustomize needs no build
# of its own: `kubectl kustomize` embeds kustomize v5.
build_helm() {
  local helm="$dir/bin/helm-$HELM_VERSION"
  [[ -x "$helm" ]] && return 0
  local src="$dir/src/helm-$HELM_VERSION" start=$SECONDS
  rm -rf "$src" && mkdir -p "$src"
  printf 'module gitsync.local/testbed/helm\n\ngo 1.26.0\n' > "$src/go.mod"
  log "building Helm $HELM_VERSION"
  (cd "$src" && go get "helm.sh/helm/v4@$HELM_VERSION" \
    && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
      -o "$helm.tmp" helm.sh/helm/v4/cmd/helm)
  mv "$helm.tmp" "$helm"
  log "built Helm in $((SECONDS - start)) s"
}

# Prometheus and promtool from Debian's prometheus package, unpacked like sshd: promtool checks
# deploy/'s alert rules, prometheus scrapes the agent's /metrics in one test.
fetch_prometheus() {
  local dest="$dir/prometheus"
  [[ -x "$dest/usr/bin/promtool" && -x "$dest/usr/bin/prometheus" ]] && return 0
  local tmp; tmp="$(mktemp -d)"
  log "fetching prometheus (promtool) from Debian (unpacked, not installed)"
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq >/dev/null
    (cd "$tmp" && apt-get download prometheus >/dev/null)
  fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$dest.tmp"
  rm -rf "$tmp" "$dest" && mv "$dest.tmp" "$dest"
}

# zsh and fish from Debian's packages, unpacked like sshd: `gitsync completion zsh|fish` is
# tested in the real shells (tests/integration/test_completion_shells.py). fish needs its
# libpcre2-32, unpacked beside it.
fetch_shells() {
  local dest="$dir/shells"
  [[ -x "$dest/bin/zsh" && -x "$dest/usr/bin/fish" ]] && return 0
  local tmp; tmp="$(mktemp -d)"
  local packages=(zsh zsh-common fish fish-common libpcre2-32-0)
  log "fetching zsh and fish from Debian (unpacked, not installed)"
  if ! (cd "$tmp" && apt-get download "${packages[@]}" >/dev/null 2>&1); then
    apt-get update -qq >/dev/null
    (cd "$tmp" && apt-get download "${packages[@]}" >/dev/null)
  fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dest.tmp"; done
  rm -rf "$tmp" "$dest" && mv "$dest.tmp" "$dest"
}

# The ServiceMonitor and PrometheusRule CRDs deploy/ uses, from the prometheus-operator module.
# Headless Chromium and its WebDriver for the status page's browser tests (tests/web/): Debian's
# packages, installed only when missing (a second run costs two file tests). When they cannot be
# installed the build goes on, and the browser tests fail saying so.
install_chromium() {
  [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] && return 0
  if [[ "$(id -u)" -ne 0 ]]; then
    log "chromium and chromium-driver are missing; as root: apt-get install -y chromium chromium-driver"
    return 0
  fi
  log "installing Debian's chromium and chromium-driver for the browser tests"
  apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || log "could not install chromium and chromium-driver: the browser tests will fail"
}

# Ray with Serve, for the real-Ray mode of the test bed (testbed/rayhost.py): a venv of its own
# under the cache, from PyPI through pip (PIP_CACHE_DIR is pip's own, so a warm cache makes a
# reinstall a copy). A stamp written only after `ray --version` answered makes a second run
# install nothing; a half-finished venv has no stamp and is rebuilt.
install_ray() {
  local venv="$dir/ray-venv" stamp="$dir/ray-venv/.ray-$RAY_VERSION"
  [[ -f "$stamp" && -x "$venv/bin/ray" ]] && return 0
  local start=$SECONDS
  log "installing ray[serve]==$RAY_VERSION into $venv (cold: about 2 minutes, 490 MB)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-input "ray[serve]==$RAY_VERSION"
  local version
  version="$("$venv/bin/ray" --version 2>&1)"
  [[ "$version" == *"$RAY_VERSION"* ]] || { log "ray --version answered: $version"; exit 1; }
  touch "$stamp"
  log "installed $version in $((SECONDS - start)) s ($(du -sm "$venv" | cut -f1) MB)"
}

monitoring_crds_dir() {
  go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

kuberay_dir() {
  go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

lane_kube() { step kube-apiserver+kubectl build_kube; }
lane_go() { step kuberay-operator build_kuberay_operator; step gitea build_gitea; }
# etcd here: the downloads before it leave the CPU to the Go lanes, and the lanes then end
# close together; first in the Go lane it made that lane the longest. Helm last: this lane ended
# earliest (docs/testbed.md, "Measured", has each step's time from a cold run).
lane_debian() {
  step sshd fetch_sshd; step prometheus fetch_prometheus; step shells fetch_shells
  step chromium install_chromium; step ray-venv install_ray; step etcd build_etcd
  step helm build_helm
}

# Each lane's lines carry its name; a failed lane fails the build after the others finish.
pids=()
for lane in kube go debian; do
  ( set -o pipefail; "lane_$lane" 2>&1 | sed -u "s/^/[$lane] /" >&2 ) &
  pids+=("$!")
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[[ $failed -eq 0 ]] || { log "a build lane failed: see its lines above"; exit 1; }
monitoring="$(monitoring_crds_dir)/example/prometheus-operator-crd"
[[ -f "$monitoring/monitoring.coreos.com_servicemonitors.yaml" ]] || { log "ServiceMonitor CRD missing from $monitoring"; exit 1; }
kuberay="$(kuberay_dir)"
zsh_modules="$(ls -d "$dir"/shells/usr/lib/*/zsh/[0-9]* | head -n 1)"
fish_library="$(dirname "$(ls "$dir"/shells/usr/lib/*/libpcre2-32.so.0 | head -n 1)")"
[[ -f "$kuberay/config/crd/bases/ray.io_rayservices.yaml" ]] || { log "RayService CRD missing from $kuberay"; exit 1; }
# One line per artefact, read by the Python harness (testbed/binaries.py); written whole, then
# renamed, so a reader never sees half of it.
cat > "$dir/manifest.env.tmp" <<ENV
KUBE_APISERVER=$dir/bin/kube-apiserver-$KUBE_VERSION
KUBECTL=$dir/bin/kubectl-$KUBE_VERSION
ETCD=$dir/bin/etcd-$ETCD_VERSION
KUBERAY_CRDS=$kuberay/config/crd/bases
KUBERAY_OPERATOR=$dir/bin/kuberay-operator-$KUBERAY_VERSION
SSHD=$dir/openssh/usr/sbin/sshd
SSHD_LIBRARY_PATH=$dir/openssh/usr/lib/x86_64-linux-gnu
GITEA=$dir/bin/gitea-$GITEA_VERSION
GITEA_ROOT=$dir/src/gitea-$GITEA_VERSION
GITEA_VERSION=$GITEA_VERSION
PROMETHEUS=$dir/prometheus/usr/bin/prometheus
PROMTOOL=$dir/prometheus/usr/bin/promtool
MONITORING_CRDS=$monitoring
ZSH=$dir/shells/bin/zsh
ZSH_MODULES=$zsh_modules
ZSH_FUNCTIONS=$dir/shells/usr/share/zsh/functions
FISH=$dir/shells/usr/bin/fish
FISH_LIBRARY_PATH=$fish_library
FISH_FUNCTIONS=$dir/shells/usr/share/fish/functions
KUBE_VERSION=$KUBE_VERSION
ETCD_VERSION=$ETCD_VERSION
KUBERAY_VERSION=$KUBERAY_VERSION
RAY_PYTHON=$dir/ray-venv/bin/python
RAY_VERSION=$RAY_VERSION
HELM=$dir/bin/helm-$HELM_VERSION
HELM_VERSION=$HELM_VERSION
ENV
mv "$dir/manifest.env.tmp" "$dir/manifest.env"
log "ready: $(ls -1 "$dir/bin" | tr '\n' ' ')"
