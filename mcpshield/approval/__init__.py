"""Human approval of the calls a profile marks `ask`: the terminal approver (`mcpshield approvals`),
its per-user socket, its wire protocol, the wrapper's link to it, and MCP elicitation. See docs/approvals.md.
"""
