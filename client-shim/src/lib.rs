//! The hushgate client shim (filled in by its own issue).
