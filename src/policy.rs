//! gov.toml (placeholder; being written)
