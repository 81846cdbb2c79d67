"""Report edge: commit statuses on forges (Gitea, GitHub, GitLab) and git notes."""
