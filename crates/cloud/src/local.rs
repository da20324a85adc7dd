//! The local provider (being written).

/// The local provider.
pub struct LocalProvider;
