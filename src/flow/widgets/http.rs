//! http widgets.
