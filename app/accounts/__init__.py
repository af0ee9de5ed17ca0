"""Accounts: users, teams, memberships, invitations, API tokens, sign-in and the account pages."""
