//! voice widgets.
