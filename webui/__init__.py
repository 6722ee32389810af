"""OpenDeep web UI: accounts, chat assistant, orchestrator, campaigns, live updates, HITL, JSON API."""
