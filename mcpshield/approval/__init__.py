"""Human approval of the calls a profile marks `ask`: the terminal approver (`mcpshield approvals`),
its per-user socket, its wire protocol, and the wrapper's link to it. See docs/approvals.md.
"""
