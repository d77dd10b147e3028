"""The top layer below the CLI: the run pipeline (data -> prune -> distill -> decode -> export ->
evaluate), the run loop, progress, summaries and export (docs/ARCHITECTURE.md)."""
