"""Shared test helpers: tiny configs and inputs (configs), in-process trainers (training), and the one place
that starts and stops multi-process gloo groups (distributed)."""
