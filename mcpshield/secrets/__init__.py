"""Secrets from the OS keyring: stored one item per secret under the service `mcpshield`, listed
through a non-secret index, and resolved at launch into the server's environment (never argv).

    bus        recovers the session bus a GUI client stripped from the environment (Linux)
    backend    which keyring backend is active, and whether it may hold secrets
    store      get / set / delete one secret; every keyring failure becomes a SecretError
    index      `<user config dir>/secrets.json`: names and when they were set, never values
    resolve    a profile's [env] table into the server's variables and the values to redact
    commands   `mcpshield secret set | list | rm`
    doctor     `mcpshield secret doctor`: the backend, its verdict, the bus, the index
"""
