"""The terminal client: `tuneboard submit config.yaml` and `tuneboard jobs`, over the REST API only.

Talks to a Tuneboard server by HTTP (httpx) and reads job files (PyYAML); imports nothing of the server
side, so it runs on a laptop that has neither the database nor Redis, and never imports torch or
`workers`. Modules: `http` (REST calls, the error envelope, Server-Sent Events), `job_file` (the
config.yaml format), `progress` (the live bar), `follow` (the stream with reconnects), `submit` and
`jobs_list` (the two commands). docs/cli.md is the user's guide.
"""
