//! messaging widgets.
