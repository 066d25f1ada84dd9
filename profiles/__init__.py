"""The profiles shipped with mcpshield, one TOML file per well-known server (installed as mcpshield.profiles)."""
