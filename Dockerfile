# The gitsync agent image: `docker build -t gitsync .` (deploy/deployment.yaml runs it).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gitsync ./gitsync
RUN pip install --no-cache-dir --prefix=/install .

# The renderers (docs/repo-config.md, "Sources"): kustomize v5 (the version kubectl v1.35
# embeds) and Helm v4 (the version the test bed builds, testbed/build.sh), from their Go
# modules; static binaries (CGO_ENABLED=0) copied into the agent's image.
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

FROM python:3.11-slim-bookworm
# git is the source edge's transport; openssh-client for ssh:// repositories and ssh-keygen
# (verify.method: ssh); gpg for verify.method: gpg (git verify-commit runs it; without it
# every commit would be refused).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client gpg ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --home-dir /tmp gitsync
COPY --from=build /install /usr/local
COPY --from=renderers /out/kustomize /out/helm /usr/local/bin/
USER 65532:65532
ENV HOME=/tmp PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["gitsync"]
CMD ["run", "--config", "/etc/gitsync/gitsync.yaml"]
