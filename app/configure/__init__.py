"""The configuration page: the form, the live estimate (page and REST) and the launch card."""
