//! Studio flow engine (placeholder while modules land).
pub mod conditions;
pub mod definition;
pub mod template;
pub mod validate;
pub(crate) mod widgets;
