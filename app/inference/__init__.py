"""Trying adapters, the web side: chat completions answered by inference workers, streamed back through Redis.
Must not import torch or `workers`."""
