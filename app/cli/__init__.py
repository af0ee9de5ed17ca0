"""The `tuneboard` command: app.cli.main holds the parser and hands each command to its module here.

Must not import torch or `workers` (worker processes are started as `celery -A workers`).
"""
