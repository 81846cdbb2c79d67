# The gitsync agent image: `docker build -t gitsync .` (deploy/base/deployment.yaml runs it).
# Reproducible: the base image is pinned by digest, and the dependencies are installed from
# requirements.lock (versions and wheel hashes, `--require-hashes`; `python -m testbed.lockfile`
# writes it, tests/test_lockfile.py keeps it in step with pyproject.toml), gitsync itself with
# --no-deps. `gitsync --version` names the lock it was built from.
#
# The digest below was NOT pulled or verified here (the machine this was written on reaches
# no image registry): it is python:3.11-slim-bookworm's as a public record gave it. Before
# relying on it, check it with `docker buildx imagetools inspect python:3.11-slim-bookworm`
# and replace it if the tag has moved or the record was wrong; BASE sets both stages.
ARG BASE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# The renderers (docs/repo-config.md, "Sources"): kustomize v5 (the version kubectl v1.35
# embeds) and Helm v4 (the version the test bed builds, testbed/build.sh), from their Go
# modules; static binaries (CGO_ENABLED=0) copied into the agent's image. The Go image is
# not pinned by digest: nothing of it but the two binaries reaches the agent's image.
FROM golang:1.26-bookworm AS renderers
ARG KUSTOMIZE_VERSION=v5.7.1
ARG HELM_VERSION=v4.3.2
ENV GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
WORKDIR /renderers
RUN printf 'module gitsync.local/renderers\n\ngo 1.26.0\n' > go.mod \
 && go get "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}" "helm.sh/helm/v4@${HELM_VERSION}" \
 && go build -trimpath -ldflags "-s -w" -o /out/kustomize sigs.k8s.io/kustomize/kustomize/v5 \
 && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}" \
      -o /out/helm helm.sh/helm/v4/cmd/helm

FROM ${BASE} AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY gitsync ./gitsync
RUN pip install --no-cache-dir --prefix=/install --require-hashes --only-binary :all: \
      -r requirements.lock \
 && pip install --no-cache-dir --prefix=/install --no-deps .

FROM ${BASE}
# git is the source edge's transport; openssh-client for ssh:// repositories and ssh-keygen
# (verify.method: ssh); gpg for verify.method: gpg (git verify-commit runs it; without it
# every commit would be refused).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client gpg ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --home-dir /tmp gitsync
COPY --from=build /install /usr/local
# Read by `gitsync --version` (cli.IMAGE_LOCK: sys.prefix/share/gitsync).
COPY requirements.lock /usr/local/share/gitsync/requirements.lock
COPY --from=renderers /out/kustomize /out/helm /usr/local/bin/
USER 65532:65532
ENV HOME=/tmp PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["gitsync"]
CMD ["run", "--config", "/etc/gitsync/gitsync.yaml"]
