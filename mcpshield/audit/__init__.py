"""The audit log: one JSONL file per session, each line sealed into a SHA-256 chain.

`writer` records the relay's decisions off the hot path, `chain` seals and verifies lines,
`location` places files under the user's log directory, `read` and `commands` serve `mcpshield audit`.
"""
