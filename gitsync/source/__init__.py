"""Git edge: the only package that runs git.

Owns polling (``ls-remote``), fetching, materialising a tree at an exact SHA, credentials and
signature verification. Must not parse manifests or talk to Kubernetes.

    source = GitSource(RepoSource(url, branch, cache_dir, auth=TokenAuth(token_file=...)))
    sha = source.head()          # one `git ls-remote`
    path = source.checkout(sha)  # the tree at exactly `sha`
"""

from gitsync.source.config import GitAuth, RepoSource, SshAuth, TokenAuth, VerifyConfig
from gitsync.source.git import GitSource
from gitsync.source.redact import redact, redact_url
from gitsync.source.runner import GitCall, GitRunner

__all__ = [
    "GitAuth",
    "GitCall",
    "GitRunner",
    "GitSource",
    "RepoSource",
    "SshAuth",
    "TokenAuth",
    "VerifyConfig",
    "redact",
    "redact_url",
]
