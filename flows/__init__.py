"""Prefect flows and deployments of ftops (the only package that imports Prefect)."""
