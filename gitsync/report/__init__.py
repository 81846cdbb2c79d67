"""Commit statuses: what to say (``status``), where to say it (one module per provider behind
``provider.Provider``: ``gitea``, ``github``, ``gitlab``, ``gitnotes``), and posting without
blocking a rollout (``reporter``). ``factory`` builds them from the agent config.
"""
