//! logic widgets.
