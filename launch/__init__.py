"""Launchers: decide where and when a study's runs execute (this machine, Cloud TPU, GKE)."""
