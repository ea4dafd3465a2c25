//! unsupported widgets.
