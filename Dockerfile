# The gitsync agent image: `docker build -t gitsync .` (deploy/base/deployment.yaml runs it).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gitsync ./gitsync
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
# git is the source edge's transport; openssh-client for ssh:// repositories and ssh-keygen
# (verify.method: ssh); gpg for verify.method: gpg (git verify-commit runs it; without it
# every commit would be refused).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client gpg ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --home-dir /tmp gitsync
COPY --from=build /install /usr/local
USER 65532:65532
ENV HOME=/tmp PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["gitsync"]
CMD ["run", "--config", "/etc/gitsync/gitsync.yaml"]
